"""The classifier: rules, embedding decisions and fallbacks, scoring, and request text.

No real model: a bag-of-words hashing embedder (or hand-built vectors) makes every score
predictable and checkable against numpy.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np
import pytest

from gateway.routing.classifier import REASONS, Decision, Evidence, RouteIndex, request_text
from gateway.routing.embedder import DIMENSIONS, Vectors
from gateway.routing.table import RULE_TEXT_CHARS, RouteTable

WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Bag of words: each word adds 1 at crc32(word) % 384; rows are L2-normalised."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> Vectors:
        row = np.zeros(DIMENSIONS, np.float32)
        for word in WORD.findall(text.lower()):
            row[zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
        norm = float(np.linalg.norm(row))
        unit: Vectors = (row / norm if norm else row).astype(np.float32)
        return unit

    def embed(self, texts: list[str]) -> Vectors:
        self.calls.append(list(texts))
        if not texts:
            return np.zeros((0, DIMENSIONS), np.float32)
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)

    async def embed_many(self, texts: list[str]) -> Vectors:
        return self.embed(texts)


def unit(*weights: float) -> Vectors:
    """A unit vector whose first components are `weights` (the rest 0)."""
    row = np.zeros(DIMENSIONS, np.float32)
    row[: len(weights)] = weights
    out: Vectors = (row / np.linalg.norm(row)).astype(np.float32)
    return out


def rows(*vectors: Vectors) -> Vectors:
    out: Vectors = np.stack(vectors).astype(np.float32)
    return out


def make_table(
    routes: list[dict[str, Any]],
    *,
    default: list[str] | None = None,
    **options: Any,
) -> RouteTable:
    data: dict[str, Any] = {"routes": routes, **options}
    if default is not None:
        data["default"] = {"utterances": default}
    return RouteTable.model_validate(data)


def route(name: str, utterances: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": f"{name}-adapter",
        "utterances": utterances or [f"{name} example {i}" for i in range(3)],
        **extra,
    }


def hand_index(
    table: RouteTable, vectors: dict[str, Vectors], default: Vectors | None = None
) -> RouteIndex:
    given = dict(vectors)
    if default is not None:
        given[table.default.name] = default
    return RouteIndex(table, given)


def empty_vectors(table: RouteTable) -> dict[str, Vectors]:
    """Orthogonal placeholder vectors for every route (index >= 100: out of the way)."""
    out: dict[str, Vectors] = {}
    for i, spec in enumerate(table.routes):
        matrix = np.zeros((len(spec.utterances), DIMENSIONS), np.float32)
        for j in range(len(spec.utterances)):
            matrix[j, 100 + 10 * i + j] = 1.0
        out[spec.name] = matrix
    return out


# -- rules -------------------------------------------------------------------------------


def rule_index(*routes: dict[str, Any]) -> RouteIndex:
    table = make_table(list(routes))
    return RouteIndex(table, empty_vectors(table))


def ruled(index: RouteIndex, text: str) -> Decision | None:
    """The decision of the rules alone (a table with no rule floor)."""
    match = index.match_rules(text)
    return None if match is None else index.conclude(Evidence({}, match))


def test_keywords_match_whole_words_in_any_case() -> None:
    index = rule_index(route("pirate", keywords=["ship", "treasure map"]))
    for text in ["Board the SHIP now", "ship", "a ship.", "(ship)", "I LOVE THE TREASURE MAP"]:
        decision = ruled(index, text)
        assert decision is not None, text
        assert decision is not None
        assert (decision.route, decision.adapter, decision.confidence) == (
            "pirate",
            "pirate-adapter",
            1.0,
        )
        assert (decision.method, decision.reason) == ("rule", "keyword")
    for text in ["free shipping today", "relationship", "starship", "treasure maps", "treasure"]:
        assert ruled(index, text) is None, text


def test_keyword_phrases_need_the_whole_phrase() -> None:
    index = rule_index(route("pirate", keywords=["treasure map"]))
    matched = ruled(index, "where is the TREASURE MAP?")
    assert matched is not None and matched.reason == "keyword"
    assert ruled(index, "the treasure is on the map") is None
    assert ruled(index, "treasure mapping") is None


def test_keywords_with_regex_characters_are_literal() -> None:
    index = rule_index(route("code", keywords=["c++", "a.b"]))
    assert ruled(index, "I write C++ daily") is not None
    assert ruled(index, "axb") is None
    assert ruled(index, "a.b") is not None


def test_patterns_search_in_any_case() -> None:
    index = rule_index(route("pirate", patterns=[r"\btalk like a pirate\b", r"arr+\b"]))
    decision = ruled(index, "Please TALK LIKE A PIRATE for me")
    assert decision is not None
    assert (decision.route, decision.confidence, decision.method, decision.reason) == (
        "pirate",
        1.0,
        "rule",
        "pattern",
    )
    assert decision.rule is not None and decision.rule.matched == r"\btalk like a pirate\b"
    assert ruled(index, "ARRRR matey") is not None  # search, not match at the start
    assert ruled(index, "talk like a pirates") is None


def test_first_route_in_table_order_wins() -> None:
    index = rule_index(
        route("first", keywords=["hello"]),
        route("second", keywords=["hello", "world"]),
    )
    decision = ruled(index, "hello world")
    assert decision is not None and decision.route == "first"
    decision = ruled(index, "world")
    assert decision is not None and decision.route == "second"
    reversed_index = rule_index(
        route("second", keywords=["hello", "world"]),
        route("first", keywords=["hello"]),
    )
    decision = ruled(reversed_index, "hello world")
    assert decision is not None and decision.route == "second"


def test_a_route_pattern_before_a_later_route_keyword() -> None:
    index = rule_index(route("a", patterns=["^hi"]), route("b", keywords=["hi"]))
    decision = ruled(index, "hi there")
    assert decision is not None
    assert (decision.route, decision.reason, decision.method) == ("a", "pattern", "rule")
    assert decision.confidence == 1.0 and dict(decision.scores) == {}


def test_keywords_of_one_route_are_checked_before_its_patterns() -> None:
    index = rule_index(route("a", keywords=["ahoy"], patterns=["ahoy"]))
    decision = ruled(index, "ahoy")
    assert decision is not None and decision.reason == "keyword"


def test_no_rules_no_match() -> None:
    index = rule_index(route("a"), route("b", keywords=["x"]))
    assert ruled(index, "nothing here") is None
    assert ruled(index, "") is None


def test_rules_only_see_the_head_of_long_texts() -> None:
    index = rule_index(route("pirate", keywords=["ahoy"]))
    assert ruled(index, "x " * 10 + "ahoy") is not None
    assert ruled(index, "x" * RULE_TEXT_CHARS + " ahoy") is None


# -- embedding decisions -----------------------------------------------------------------


def two_route_index(**options: Any) -> RouteIndex:
    """Route `a` around axis 0, route `b` around axis 1 (one utterance each)."""
    table = make_table([route("a", ["a"]), route("b", ["b"])], **options)
    return hand_index(table, {"a": rows(unit(1)), "b": rows(unit(0, 1))})


def test_best_route_wins_by_embedding() -> None:
    index = two_route_index(threshold=0.5)
    query = unit(0.3, 0.9)
    decision = index.decide(query)
    expected_b = float(query[1])
    assert decision.route == "b"
    assert decision.adapter == "b-adapter"
    assert decision.method == "embedding"
    assert decision.reason == "nearest"
    assert decision.chosen is None
    assert decision.confidence == pytest.approx(expected_b)
    assert decision.confidence == decision.scores["b"]
    assert dict(decision.scores) == pytest.approx({"a": float(query[0]), "b": expected_b})


def test_below_threshold_falls_back_to_the_default_route() -> None:
    index = two_route_index(threshold=0.8)
    query = unit(0.6, 0.7, 1.0)  # b scores ~0.52
    decision = index.decide(query)
    assert decision.route == "default"
    assert decision.adapter is None
    assert decision.method == "fallback"
    assert decision.reason == "low_confidence"
    assert decision.chosen == "b"
    assert decision.confidence == pytest.approx(float(query[1]))
    assert set(decision.scores) == {"a", "b"}


def test_a_score_exactly_at_the_threshold_passes_and_ties_go_to_the_first_route() -> None:
    index = two_route_index(threshold=0.5)
    decision = index.decide(unit(0.5, 0.5, 0.5, 0.5))  # both score exactly 0.5
    assert decision.confidence == 0.5
    assert (decision.route, decision.reason) == ("a", "nearest")
    stricter = two_route_index(threshold=0.51).decide(unit(0.5, 0.5, 0.5, 0.5))
    assert (stricter.route, stricter.reason) == ("default", "low_confidence")


def test_a_route_threshold_overrides_the_table_threshold() -> None:
    table = make_table(
        [route("a", ["a"], threshold=0.9), route("b", ["b"], threshold=0.1)], threshold=0.5
    )
    index = hand_index(table, {"a": rows(unit(1)), "b": rows(unit(0, 1))})
    strict = index.decide(unit(0.8, 0.6, 0.0))  # a: 0.8 < its 0.9, though >= the table's 0.5
    assert (strict.route, strict.reason, strict.chosen) == ("default", "low_confidence", "a")
    lenient = index.decide(unit(0.1, 0.2, 1.0))  # b: ~0.19 >= its 0.1, though < 0.5
    assert (lenient.route, lenient.reason) == ("b", "nearest")
    assert lenient.confidence == pytest.approx(0.2 / np.sqrt(1.05))


def test_nearer_default_utterances_send_requests_to_the_default_route() -> None:
    table = make_table([route("a", ["a"]), route("b", ["b"])], default=["d"], threshold=0.1)
    index = hand_index(
        table, {"a": rows(unit(1)), "b": rows(unit(0, 1))}, default=rows(unit(0, 0, 1))
    )
    query = unit(0.5, 0.1, 0.8)
    decision = index.decide(query)
    assert decision.route == "default"
    assert decision.method == "fallback"
    assert decision.reason == "nearest_default"
    assert decision.chosen == "a"
    assert decision.confidence == pytest.approx(float(query[0]))  # the best adapter route's
    assert decision.scores["default"] == pytest.approx(float(query[2]))
    # With the default farther, the adapter route wins.
    nearer_a = index.decide(unit(0.8, 0.1, 0.5))
    assert (nearer_a.route, nearer_a.reason) == ("a", "nearest")
    assert nearer_a.scores["default"] < nearer_a.confidence


def test_knn_score_is_the_mean_of_the_k_best_similarities() -> None:
    embedder = HashingEmbedder()
    utterances = [
        "sail the seven seas",
        "hoist the sails at dawn",
        "the crew of the ship",
        "bury the gold on the island",
        "a parrot on my shoulder",
    ]
    table = make_table([route("pirate", utterances), route("other", ["unrelated words"])], k=3)
    matrix = embedder.embed(utterances)
    index = RouteIndex(table, {"pirate": matrix, "other": embedder.embed(["unrelated words"])})
    query = embedder.vector("the crew will sail the ship to the island")
    similarities = matrix @ query
    expected = float(np.sort(similarities)[-3:].mean())
    assert index.scores(query)["pirate"] == pytest.approx(expected, abs=1e-6)
    # ... not the mean of all five, nor the best one alone.
    assert expected != pytest.approx(float(similarities.mean()), abs=1e-4)
    assert expected != pytest.approx(float(similarities.max()), abs=1e-4)


def test_knn_with_hand_built_vectors() -> None:
    table = make_table([route("r", ["1", "2", "3", "4"])], k=2)
    matrix = rows(unit(1), unit(0, 1), unit(1, 1), unit(0, 0, 1))
    index = hand_index(table, {"r": matrix})
    query = unit(1)
    # similarities: 1, 0, 0.7071, 0 -> the best two average to 0.8536
    assert index.scores(query)["r"] == pytest.approx((1 + np.sqrt(0.5)) / 2, abs=1e-6)


def test_k_larger_than_the_utterances_uses_all_of_them() -> None:
    table = make_table([route("r", ["1", "2"])], k=50)
    matrix = rows(unit(1), unit(0, 1))
    index = hand_index(table, {"r": matrix})
    query = unit(3, 1)
    assert index.scores(query)["r"] == pytest.approx(float((matrix @ query).mean()), abs=1e-6)
    assert index.scores(query)["r"] == pytest.approx(4 / np.sqrt(10) / 2, abs=1e-6)


def test_centroid_scores_against_the_normalised_mean() -> None:
    table = make_table([route("r", ["1", "2", "3"])], method="centroid", k=1)
    matrix = rows(unit(1), unit(0, 1), unit(1, 1))
    index = hand_index(table, {"r": matrix})
    query = unit(1, 0, 1)
    centre = matrix.mean(axis=0)
    expected = float(centre @ query / np.linalg.norm(centre))
    assert index.scores(query)["r"] == pytest.approx(expected, abs=1e-6)
    # Not what knn with k=1 (the best utterance) would say.
    assert expected != pytest.approx(float((matrix @ query).max()), abs=1e-3)


def test_centroid_applies_to_the_default_utterances_too() -> None:
    table = make_table([route("r", ["r"])], default=["1", "2"], method="centroid", k=1)
    default = rows(unit(0, 1), unit(0, 0, 1))
    index = hand_index(table, {"r": rows(unit(1))}, default=default)
    query = unit(0, 1)
    # The default centroid is (0, 1, 1)/sqrt(2); knn with k=1 would say 1.0.
    assert index.scores(query)["default"] == pytest.approx(np.sqrt(0.5), abs=1e-6)


def test_scores_include_the_default_only_when_it_has_utterances() -> None:
    without = two_route_index()
    assert set(without.scores(unit(1))) == {"a", "b"}
    table = make_table([route("a", ["a"]), route("b", ["b"])], default=["d"])
    with_default = hand_index(
        table, {"a": rows(unit(1)), "b": rows(unit(0, 1))}, default=rows(unit(0, 0, 1))
    )
    scores = with_default.scores(unit(0, 0, 1))
    assert set(scores) == {"a", "b", "default"}
    assert scores["default"] == pytest.approx(1.0)


def test_an_empty_default_matrix_counts_as_no_default() -> None:
    table = make_table([route("a", ["a"])])
    index = hand_index(table, {"a": rows(unit(1))}, default=np.zeros((0, DIMENSIONS), np.float32))
    assert set(index.scores(unit(1))) == {"a"}


def test_fallback_has_no_evidence() -> None:
    index = two_route_index()
    decision = index.fallback("overloaded")
    assert decision == Decision("default", None, 0.0, "fallback", "overloaded")
    assert dict(decision.scores) == {} and decision.chosen is None
    assert "overloaded" in REASONS and "no_text" in REASONS


def test_to_fallback_keeps_the_evidence() -> None:
    decision = two_route_index(threshold=0.1).decide(unit(1))
    moved = decision.to_fallback("default", "not_allowed")
    assert (moved.route, moved.adapter, moved.method, moved.reason) == (
        "default",
        None,
        "fallback",
        "not_allowed",
    )
    assert moved.chosen == "a" and moved.confidence == decision.confidence
    assert moved.scores == decision.scores


def test_renamed_default_route_is_used_for_fallbacks() -> None:
    table = RouteTable.model_validate(
        {"default": {"name": "base"}, "routes": [route("a", ["a"])], "threshold": 0.9}
    )
    index = hand_index(table, {"a": rows(unit(1))})
    assert index.fallback("no_text").route == "base"
    assert index.decide(unit(0, 1)).route == "base"


# -- building an index -------------------------------------------------------------------


async def test_build_embeds_every_utterance_in_one_call() -> None:
    embedder = HashingEmbedder()
    table = make_table(
        [
            route("pirate", ["sail the seas", "hoist the mainsail"]),
            route("french", ["speak french to me", "bonjour mon ami", "a croissant please"]),
        ],
        default=["reverse a linked list", "fix my python code"],
        threshold=0.3,
    )
    index = await RouteIndex.build(table, embedder.embed_many)
    assert len(embedder.calls) == 1
    assert sorted(embedder.calls[0]) == sorted(
        [*table.routes[0].utterances, *table.routes[1].utterances, *table.default.utterances]
    )
    # Each route got its own utterances' rows: a text scores 1.0 against its own route.
    for spec in table.routes:
        for text in spec.utterances:
            assert index.scores(embedder.vector(text))[spec.name] == pytest.approx(
                float((embedder.embed(spec.utterances) @ embedder.vector(text)).mean()),
                abs=1e-6,
            )
    assert index.scores(embedder.vector("hoist the mainsail"))["pirate"] > 0.5
    decision = index.decide(embedder.vector("could you hoist the mainsail"))
    assert (decision.route, decision.method, decision.adapter) == (
        "pirate",
        "embedding",
        "pirate-adapter",
    )
    default = index.decide(embedder.vector("my python code is broken"))
    assert (default.route, default.reason) == ("default", "nearest_default")


async def test_build_without_default_utterances_has_no_default_scores() -> None:
    embedder = HashingEmbedder()
    table = make_table([route("a", ["alpha beta"]), route("b", ["gamma delta"])])
    index = await RouteIndex.build(table, embedder.embed_many)
    assert embedder.calls == [["alpha beta", "gamma delta"]]
    assert set(index.scores(embedder.vector("alpha"))) == {"a", "b"}


def test_summary_describes_the_table() -> None:
    table = make_table(
        [route("a", ["x", "y"], keywords=["k"], threshold=0.2), route("b", ["z"])],
        default=["d"],
        threshold=0.4,
    )
    summary = hand_index(
        table, {"a": rows(unit(1), unit(0, 1)), "b": rows(unit(0, 0, 1))}, default=rows(unit(1))
    ).summary()
    assert summary["default"] == "default" and summary["default_utterances"] == 1
    assert [r["name"] for r in summary["routes"]] == ["a", "b"]
    assert summary["routes"][0]["threshold"] == pytest.approx(0.2)
    assert summary["routes"][1]["threshold"] == pytest.approx(0.4)
    assert summary["routes"][0]["utterances"] == 2 and summary["routes"][0]["keywords"] == 1


# -- request text ------------------------------------------------------------------------


REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "last user message": (
        {
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "  second question  "},
            ]
        },
        "second question",
    ),
    "later assistant messages are ignored": (
        {
            "messages": [
                {"role": "user", "content": "the question"},
                {"role": "assistant", "content": "the answer"},
            ]
        },
        "the question",
    ),
    "text parts": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look at"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        {"type": "text", "text": "this picture"},
                    ],
                }
            ]
        },
        "look at\nthis picture",
    ),
    "only an image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "",
    ),
    "no user message": (
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
        "",
    ),
    "no messages at all": ({"messages": []}, ""),
    "user content is null": ({"messages": [{"role": "user", "content": None}]}, ""),
    "completion prompt": ({"prompt": "  once upon a time "}, "once upon a time"),
    "list of prompts": ({"prompt": ["first", "second"]}, "first\nsecond"),
    "token-id prompt": ({"prompt": [1, 2, 3]}, ""),
    "token-id prompts": ({"prompt": [[1, 2], [3]]}, ""),
    "neither": ({"model": "auto"}, ""),
}


@pytest.mark.parametrize(("payload", "text"), REQUESTS.values(), ids=REQUESTS.keys())
def test_request_text(payload: dict[str, Any], text: str) -> None:
    assert request_text(payload) == text
