"""The learned head: its probabilities, its character n-grams, and how a table uses it.

Hand-made vectors keep the arithmetic checkable; the packaged text files are checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from gateway.routing.classifier import Evidence, RouteIndex
from gateway.routing.embedder import DIMENSIONS, Vectors
from gateway.routing.head import (
    BACKGROUND_FILE,
    FOLLOW_UP,
    FOLLOW_UP_FILE,
    packaged_texts,
    train_head,
    vectorizer_of,
)
from gateway.routing.table import RouteTable

RNG = np.random.default_rng(7)


def cluster(axis: int, n: int, spread: float = 0.2) -> Vectors:
    """`n` unit vectors around the basis vector `axis`."""
    rows = RNG.normal(0.0, spread, (n, DIMENSIONS)).astype(np.float32)
    rows[:, axis] += 1.0
    out: Vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def basis(axis: int) -> Vectors:
    row = np.zeros(DIMENSIONS, np.float32)
    row[axis] = 1.0
    return row


def test_probabilities_sum_to_one_and_follow_the_clusters() -> None:
    head = train_head([("a", cluster(0, 30)), ("b", cluster(1, 30)), ("z", cluster(2, 60))], c=4)
    assert head.classes == ("a", "b", "z")
    for axis, name in [(0, "a"), (1, "b"), (2, "z")]:
        probabilities = head.probabilities(basis(axis))
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert max(probabilities, key=lambda k: probabilities[k]) == name
        assert probabilities[name] > 0.8


def test_two_classes_give_two_probabilities() -> None:
    # scikit-learn keeps a single row of weights for two classes; the head keeps both.
    head = train_head([("a", cluster(0, 20)), ("z", cluster(1, 20))], c=4)
    assert head.weights.shape == (2, DIMENSIONS)
    near_a, near_z = head.probabilities(basis(0)), head.probabilities(basis(1))
    assert near_a["a"] > 0.8 > near_z["a"]
    assert near_a["a"] + near_a["z"] == pytest.approx(1.0, abs=1e-5)


def test_a_head_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        train_head([("a", cluster(0, 5)), ("z", np.zeros((0, DIMENSIONS), np.float32))], c=1)


def test_classes_are_balanced_whatever_their_size() -> None:
    # 20 examples against 400: without balancing, the big class would swallow the middle.
    head = train_head([("small", cluster(0, 20)), ("big", cluster(1, 400))], c=4)
    middle = basis(0) + basis(1)
    probabilities = head.probabilities(middle / np.linalg.norm(middle))
    assert 0.25 < probabilities["small"] < 0.75


TEXTS = [
    ["hoist the mainsail", "reef the sails in a squall", "a sextant at dawn"],
    ["a croissant in Lyon", "conjugate the verb être", "Bordeaux wine"],
    ["sort a list in Python", "my sink is leaking", "the capital of Peru"],
]


@pytest.mark.parametrize("words", [0.0, 0.5])
def test_the_lexicons_are_exactly_scikit_learns_transform(words: float) -> None:
    groups = [(name, cluster(i, 3)) for i, name in enumerate(["sea", "france", "z"])]
    head = train_head(groups, c=4, texts=TEXTS, lexical=1.5, words=words)
    corpus = [t for texts in TEXTS for t in texts]
    analyzers = ["char_wb", "word"] if words else ["char_wb"]
    assert len(head.lexicons) == len(analyzers)
    for lexicon, analyzer in zip(head.lexicons, analyzers, strict=True):
        vectorizer = vectorizer_of(corpus, analyzer)
        assert isinstance(vectorizer, TfidfVectorizer)
        assert lexicon.vocabulary == vectorizer.vocabulary_
        weights = lexicon.weights.T  # (classes, n-grams)
        for text in ["Hoist THE sails!", "un croissant, s'il vous plaît", "unknownzzz", "", "a"]:
            expected = np.asarray(vectorizer.transform([text]) @ weights.T).ravel()
            assert lexicon.logits(text) == pytest.approx(expected, abs=1e-5), text


def test_word_features_are_weighted_by_lexical_times_words() -> None:
    groups = [(name, cluster(i, 3)) for i, name in enumerate(["sea", "france", "z"])]
    chars = train_head(groups, c=4, texts=TEXTS, lexical=1.5)
    both = train_head(groups, c=4, texts=TEXTS, lexical=1.5, words=2.0)
    assert [len(h.lexicons) for h in (chars, both)] == [1, 2]
    # "the sails" is a word pair of the sea examples: it counts only with words.
    assert "the sails" not in both.lexicons[0].vocabulary
    assert "reef the" in both.lexicons[1].vocabulary
    text = "reef the sails"
    assert both.probabilities(basis(9), text) != chars.probabilities(basis(9), text)


def test_character_n_grams_tell_apart_what_the_vectors_do_not() -> None:
    # Every example has the same vector: only the words can separate the classes.
    same = np.tile(basis(5), (3, 1))
    groups = [("sea", same), ("france", same), ("z", same)]
    head = train_head(groups, c=10, texts=TEXTS, lexical=2.0)
    assert (
        max(head.probabilities(basis(5), "reef the mainsail").items(), key=lambda kv: kv[1])[0]
        == "sea"
    )
    without = train_head(groups, c=10)
    spread = without.probabilities(basis(5), "reef the mainsail")
    assert max(spread.values()) - min(spread.values()) < 0.05


def test_lexical_features_need_the_texts() -> None:
    with pytest.raises(ValueError, match="need the texts"):
        train_head([("a", cluster(0, 3)), ("z", cluster(1, 3))], c=1, lexical=1.0)


def test_packaged_texts_are_clean() -> None:
    for name in (BACKGROUND_FILE, FOLLOW_UP_FILE):
        texts = packaged_texts(name)
        assert len(texts) >= 150
        assert all(t == t.strip() and t for t in texts)
        assert len({t.casefold() for t in texts}) == len(texts)
    assert len(packaged_texts(BACKGROUND_FILE)) >= 1000


# -- a head table: classes, context, rules ------------------------------------------------


def head_table(**options: object) -> RouteTable:
    return RouteTable.model_validate(
        {
            "method": "head",
            "threshold": 0.5,
            "head": {"background": "none", "c": 100},
            "routes": [
                {"name": "sea", "adapter": "pirate", "utterances": ["s1", "s2"]},
                {"name": "france", "adapter": "french", "utterances": ["f1", "f2"]},
            ],
            "default": {"utterances": ["d1", "d2"]},
            **options,
        }
    )


async def build(table: RouteTable) -> RouteIndex:
    """Each class's examples around its own axis (sea 0, france 1, default 2, follow-up 3)."""
    axes = {"s1": 0, "s2": 0, "f1": 1, "f2": 1, "d1": 2, "d2": 2}

    async def embed_many(texts: list[str]) -> Vectors:
        rows = [cluster(axes.get(t, 3), 1, spread=0.02)[0] for t in texts]
        return np.stack(rows) if rows else np.zeros((0, DIMENSIONS), np.float32)

    return await RouteIndex.build(table, embed_many)


async def test_a_head_table_learns_the_follow_up_class_only_when_it_reads_context() -> None:
    without = await build(head_table())
    assert set(without.scores(basis(0))) == {"sea", "france", "default"}
    reading = await build(head_table(context={"turns": 2}))
    assert set(reading.scores(basis(0))) == {"sea", "france", "default", FOLLOW_UP}
    # A follow-up's context is scored without the follow-up class, renormalised.
    in_context = reading.context_scores(basis(3))
    assert FOLLOW_UP not in in_context
    assert sum(in_context.values()) == pytest.approx(1.0, abs=1e-5)


async def test_a_follow_up_takes_the_route_of_its_conversation() -> None:
    index = await build(head_table(context={"turns": 2, "weight": 1.5, "switch": 0.6}))
    follow_up = basis(3)
    evidence = index.evidence(follow_up)
    assert index.conclude(evidence).route == "default"
    earlier = index.earlier_to_read(evidence, ["old", "older", "sailing talk"], "")
    assert earlier == ("older", "sailing talk")  # the last `turns` turns, oldest first
    decided = index.conclude(index.in_context(evidence, follow_up, [basis(1), basis(0)]))
    assert (decided.route, decided.reason, decided.method) == ("sea", "context", "embedding")
    assert decided.context_scores is not None and decided.scores == evidence.scores
    # A message that is clearly the default's changes the topic: no context is read.
    assert index.earlier_to_read(index.evidence(basis(2)), ["sailing talk"], "") == ()
    # So does one that says so, whatever its scores (the builtin `context.breaks`).
    for says in ["ok, unrelated: and the second one?", "Switching gears - why?", "new question"]:
        assert index.breaks_topic(says), says
        assert index.earlier_to_read(evidence, ["sailing talk"], says) == ()
    assert index.earlier_to_read(evidence, ["sailing talk"], "and the second one?") != ()
    # A message that reaches a route by itself keeps it, whatever came before.
    sea = index.evidence(basis(0))
    assert index.conclude(index.in_context(sea, basis(0), [basis(1)])).reason == "nearest"


async def test_a_table_can_name_its_own_topic_breaks_or_none() -> None:
    own = await build(head_table(context={"turns": 2, "breaks": [r"\bpar ailleurs\b"]}))
    assert own.breaks_topic("Par ailleurs, une question") and not own.breaks_topic("unrelated")
    none = await build(head_table(context={"turns": 2, "breaks": []}))
    assert not none.breaks_topic("unrelated, but why?")


async def test_a_vetoed_or_weak_rule_does_not_decide() -> None:
    table = head_table(rule_floor=0.3)
    table.routes[0].keywords.append("ahoy")
    table.routes[0].negatives.append(r"\bahoy there, landlubber\b")
    index = await build(RouteTable.model_validate(table.model_dump()))
    assert index.needs_embedding_for_rules
    rule = index.match_rules("ahoy")
    assert rule is not None and rule.vetoed is None
    strong = index.conclude(index.evidence(basis(0), rule))
    assert (strong.route, strong.method, strong.reason) == ("sea", "rule", "keyword")
    assert strong.confidence == pytest.approx(strong.scores["sea"])
    weak = index.conclude(index.evidence(basis(2), rule))
    assert weak.route == "default" and weak.rule is not None
    assert weak.rule.vetoed is not None and "rule floor 0.3" in weak.rule.vetoed
    negated = index.match_rules("Ahoy there, landlubber")
    assert negated is not None and negated.vetoed is not None
    vetoed = index.conclude(Evidence({}, negated))
    assert vetoed.method == "fallback" and vetoed.rule == negated
    assert index.conclude(index.evidence(basis(0), negated)).method == "embedding"
