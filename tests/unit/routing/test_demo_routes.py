from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from gateway.config import DEFAULT_CACHE_DIR
from gateway.routing.calibrate import (
    SWEEP,
    Report,
    Sample,
    SweepPoint,
    evaluate,
    folds_of,
    gather,
    learned,
    load_samples,
    out_of_fold,
    suggest_threshold,
    wilson,
)
from gateway.routing.classifier import Decision, Evidence, RouteIndex, groups_of
from gateway.routing.embedder import DIMENSIONS, Embedder, Vectors, load_embedder
from gateway.routing.head import FOLLOW_UP
from gateway.routing.headcache import HeadCache
from gateway.routing.table import (
    DEMO_TABLE,
    RouteTable,
    demo_test_path,
    demo_tuning_path,
    parse_table,
    read_table_source,
)
from gateway.routing.vectorcache import cached

# The off-topic limit the demo table's threshold was chosen at on its tuning set: under the
# 3% aim, for a margin against a fresh set's sampling noise (docs/routing.md).
DEMO_OFFTOPIC_LIMIT = 0.02
# The table learns from its tuning prompts; they are scored out of fold, in this many folds.
DEMO_FOLDS = 5


@dataclass
class Memo:
    """The real embedder; a text already embedded is not redone (each text is embedded by
    itself, so a vector does not depend on the texts beside it)."""

    inner: Embedder
    vectors: dict[str, Vectors] = field(default_factory=dict)

    def embed(self, texts: list[str]) -> Vectors:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.inner.embed(missing), strict=True))
        if not texts:
            return np.zeros((0, DIMENSIONS), np.float32)
        return np.stack([self.vectors[t] for t in texts])


@dataclass(frozen=True)
class Demo:
    table: RouteTable
    rows: list[dict[str, object]]
    index: RouteIndex
    samples: list[Sample]
    evidence: list[Evidence]
    report: Report
    embedder: Memo
    # The tuning set scored out of fold: each prompt by a head trained without its fold.
    held_out: Report


def examples_of(table: RouteTable) -> list[str]:
    """Every example a route or the default is learned from (the packaged ones too)."""
    return [text for _, texts in groups_of(table) for text in texts]


def known_routes(table: RouteTable) -> list[str]:
    return [route.name for route in table.routes] + [table.default.name]


def read_rows(path: Path) -> list[dict[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def demo() -> Demo:
    table = parse_table(read_table_source(DEMO_TABLE))
    embedder = Memo(cached(load_embedder(DEFAULT_CACHE_DIR), DEFAULT_CACHE_DIR))

    async def embed_many(texts: list[str]) -> Vectors:
        return embedder.embed(texts)

    heads = HeadCache(DEFAULT_CACHE_DIR / "classifier")

    def build(table: RouteTable) -> RouteIndex:
        return asyncio.run(RouteIndex.build(table, embed_many, heads=heads))

    index = build(table)
    samples = load_samples(demo_tuning_path(), known_routes(table))
    evidence = gather(index, embedder, samples)
    report = evaluate(index, samples, evidence, max_offtopic=DEMO_OFFTOPIC_LIMIT)
    held_out = evaluate(
        index,
        samples,
        out_of_fold(build, embedder, table, samples, DEMO_FOLDS),
        max_offtopic=DEMO_OFFTOPIC_LIMIT,
    )
    rows = read_rows(demo_tuning_path())
    return Demo(table, rows, index, samples, evidence, report, embedder, held_out)


def test_tuning_set_is_large_and_balanced(demo: Demo) -> None:
    table = demo.table
    assert len(demo.rows) >= 380
    assert len(demo.samples) == len(demo.rows)  # no line was dropped
    counts = Counter(str(row["route"]) for row in demo.rows)
    assert set(counts) == set(known_routes(table))
    assert all(counts[route.name] >= 60 for route in table.routes), counts
    assert counts[table.default.name] >= 100
    assert sum(1 for s in demo.samples if s.earlier) >= 50


def test_test_set_is_large_balanced_and_apart_from_the_tuning_set(demo: Demo) -> None:
    rows = read_rows(demo_test_path())
    samples = load_samples(demo_test_path(), known_routes(demo.table))
    assert len(samples) == len(rows) >= 400
    counts = Counter(s.route for s in samples)
    assert all(counts[route.name] >= 60 for route in demo.table.routes), counts
    assert counts[demo.table.default.name] >= 160
    assert sum(1 for row in rows if row.get("kind") == "near_miss") >= 60
    assert sum(1 for s in samples if s.earlier) >= 20
    words = [len(s.text.split()) for s in samples if not s.earlier]
    assert min(words) <= 3 and max(words) >= 40
    tuning = {s.text.casefold() for s in demo.samples}
    assert [s.text for s in samples if s.text.casefold() in tuning and not s.earlier] == []


def test_labelled_sets_have_no_duplicates(demo: Demo) -> None:
    for path in (demo_tuning_path(), demo_test_path()):
        keys = [
            (s.text.casefold(), s.earlier) for s in load_samples(path, known_routes(demo.table))
        ]
        assert len(set(keys)) == len(keys), path.name


def test_the_table_learns_from_every_tuning_prompt_and_no_test_prompt(demo: Demo) -> None:
    single = [s for s in demo.samples if not s.earlier]
    assert learned(demo.table, demo.samples) == single
    # A chat's last message may be one of the packaged topic-free follow-ups ("is it worth
    # it?"): that class carries no route, the conversation does.
    examples = {
        text.casefold()
        for name, texts in groups_of(demo.table)
        if name != FOLLOW_UP
        for text in texts
    }
    samples = load_samples(demo_test_path(), known_routes(demo.table))
    repeated = [s.text for s in samples if s.text.casefold() in examples]
    assert repeated == []


def test_the_test_set_paraphrases_no_example(demo: Demo) -> None:
    """No test prompt is within 0.9 cosine of an example the table learns from."""
    path = demo_test_path()
    examples = examples_of(demo.table)
    samples = [s for s in load_samples(path, known_routes(demo.table)) if not s.earlier]
    example_vectors = demo.embedder.embed(examples)
    sample_vectors = demo.embedder.embed([s.text for s in samples])
    similarities = sample_vectors @ example_vectors.T
    nearest = similarities.argmax(axis=1)
    too_close = [
        (round(float(similarities[i, j]), 3), samples[i].text, examples[j])
        for i, j in enumerate(nearest)
        if similarities[i, j] >= 0.90
    ]
    assert too_close == []


def test_demo_table_routes_the_tuning_set_well_out_of_fold(demo: Demo) -> None:
    report = demo.held_out
    assert report.labels == known_routes(demo.table)
    assert report.accuracy.value >= 0.85, report.confusion
    assert report.offtopic.value <= 0.03, report.confusion
    # No route overrides the table's threshold, so the sweep point at that threshold is
    # the evaluation itself.
    assert all(route.threshold is None for route in demo.table.routes)
    point = next(p for p in report.sweep if p.threshold == demo.table.threshold)
    assert point.accuracy == pytest.approx(report.accuracy.value)
    assert point.offtopic_to_adapter == pytest.approx(report.offtopic.value)
    # The table's threshold is the one its tuning set suggests out of fold (int8 embeddings
    # differ a little from one CPU kind to another, and with them the suggestion by a step or
    # two).
    assert report.suggested_threshold is not None
    assert abs(report.suggested_threshold - demo.table.threshold) <= 0.03


def test_decisions_are_the_index_decisions(demo: Demo) -> None:
    report = demo.report
    for sample, evidence, decision in zip(
        demo.samples, demo.evidence, report.decisions, strict=True
    ):
        vector = demo.embedder.embed([sample.text])[0]
        rule = demo.index.match_rules(sample.text)
        assert evidence.rule == rule
        assert dict(evidence.scores) == demo.index.scores(vector, sample.text)
        assert decision == demo.index.conclude(evidence)
    assert [s for s, _ in report.mistakes] == [
        s for s, d in zip(report.samples, report.decisions, strict=True) if s.route != d.route
    ]


def test_follow_ups_keep_their_conversation_route(demo: Demo) -> None:
    decisions = demo.held_out.decisions
    chats = [(s, d) for s, d in zip(demo.samples, decisions, strict=True) if s.earlier]
    by_context = [(s, d) for s, d in chats if d.reason == "context"]
    assert len(by_context) >= 20
    assert sum(s.route == d.route for s, d in by_context) / len(by_context) >= 0.9
    assert sum(s.route == d.route for s, d in chats) / len(chats) >= 0.75


def decide(demo: Demo, *texts: str) -> list[Decision]:
    samples = [Sample(text, "default") for text in texts]
    return [demo.index.conclude(e) for e in gather(demo.index, demo.embedder, samples)]


# Written for these tests: words of a route's keywords used in another sense.
KEYWORD_NEAR_MISSES = (
    "Is a saloon car or an estate car better for a family of five?",
    "Which pirate radio stations are still broadcasting online?",
    "The cowboy builders who did my extension left cracks everywhere. What are my rights?",
    "Is pirated software really that risky to install on a work laptop?",
    "How do I fit a lasso regression with cross-validation in scikit-learn?",
    "Can you recommend an anime like Cowboy Bebop?",
)


@pytest.mark.parametrize("text", KEYWORD_NEAR_MISSES)
def test_keyword_rules_do_not_route_near_misses(demo: Demo, text: str) -> None:
    (decision,) = decide(demo, text)
    assert decision.route == demo.table.default.name, decision
    if decision.rule is not None:  # a keyword matched: it was vetoed, and says why
        assert decision.rule.vetoed


# Written for these tests: ordinary questions about a sport, no hype, no keyword.
PLAIN_SPORTS_QUESTIONS = (
    "How does the NBA draft lottery decide the order of picks?",
    "What is the offside rule in football?",
    "How should I structure a twelve-week training plan for a half marathon?",
    "How many players does a baseball team have on the field?",
    "Explain leg before wicket in cricket.",
    "Which tennis players have won the most Grand Slam titles?",
)


@pytest.mark.parametrize("text", PLAIN_SPORTS_QUESTIONS)
def test_plain_sports_questions_reach_the_sports_route(demo: Demo, text: str) -> None:
    (decision,) = decide(demo, text)
    assert decision.route == "shout", decision


def test_confusion_matrix_agrees_with_accuracy(demo: Demo) -> None:
    report = demo.report
    matrix = np.array(report.confusion)
    n = len(report.samples)
    assert matrix.shape == (len(report.labels), len(report.labels))
    assert int(matrix.sum()) == n
    assert int(np.trace(matrix)) / n == pytest.approx(report.accuracy.value)
    assert report.accuracy.hits == int(np.trace(matrix)) and report.accuracy.total == n
    assert report.accuracy.low < report.accuracy.value < report.accuracy.high
    assert len(report.mistakes) == n - int(np.trace(matrix))
    truth = Counter(s.route for s in report.samples)
    routed = Counter(d.route for d in report.decisions)
    for i, label in enumerate(report.labels):
        assert int(matrix[i].sum()) == truth[label]
        assert int(matrix[:, i].sum()) == routed[label]
    default = report.labels.index(demo.table.default.name)
    offtopic = 1 - matrix[default, default] / matrix[default].sum()
    assert float(offtopic) == pytest.approx(report.offtopic.value)


def test_precision_and_recall_agree_with_the_confusion_matrix(demo: Demo) -> None:
    report = demo.report
    matrix = np.array(report.confusion)
    assert [r.route for r in report.routes] == report.labels
    for i, stats in enumerate(report.routes):
        hits = int(matrix[i, i])
        assert stats.support == int(matrix[i].sum())
        assert stats.predicted == int(matrix[:, i].sum())
        assert stats.recall == pytest.approx(hits / stats.support if stats.support else 0.0)
        assert stats.precision == pytest.approx(hits / stats.predicted if stats.predicted else 0.0)
        assert 0.0 <= stats.precision <= 1.0 and 0.0 <= stats.recall <= 1.0


def test_suggested_threshold_meets_the_offtopic_limit(demo: Demo) -> None:
    report = demo.report
    assert [p.threshold for p in report.sweep] == [float(t) for t in SWEEP]
    assert len(report.sweep) == 101
    suggested = report.suggested_threshold
    assert suggested is not None
    assert suggest_threshold(report.sweep, report.max_offtopic) == suggested
    point = next(p for p in report.sweep if p.threshold == suggested)
    assert point.offtopic_to_adapter <= report.max_offtopic
    allowed = [p for p in report.sweep if p.offtopic_to_adapter <= report.max_offtopic]
    assert point.accuracy == max(p.accuracy for p in allowed)
    # A threshold of 1 sends every prompt no rule decides to the default route.
    assert report.sweep[-1].offtopic_to_adapter <= report.sweep[0].offtopic_to_adapter


def points(rows: list[tuple[float, float, float]]) -> list[SweepPoint]:
    return [SweepPoint(t, accuracy, offtopic, 0.0) for t, accuracy, offtopic in rows]


def test_suggest_threshold_prefers_fewer_offtopic_mistakes_among_the_most_accurate() -> None:
    sweep = points(
        [
            (0.30, 0.95, 0.10),  # best accuracy, but too many off-topic prompts
            (0.31, 0.90, 0.04),
            (0.32, 0.90, 0.03),
            (0.33, 0.90, 0.02),
            (0.34, 0.88, 0.01),
            (0.35, 0.90, 0.00),
            (0.36, 0.90, 0.00),
        ]
    )
    # 0.31 to 0.36 are equally accurate: the ones sending no default prompt to an adapter win.
    assert suggest_threshold(sweep, 0.05) == 0.36
    assert suggest_threshold(sweep, 0.0) == 0.36
    assert suggest_threshold(sweep, 0.2) == 0.30


def test_suggest_threshold_takes_the_middle_of_the_widest_run() -> None:
    sweep = points(
        [
            (0.38, 0.90, 0.01),
            (0.39, 0.85, 0.01),
            (0.40, 0.90, 0.01),
            (0.41, 0.90, 0.01),
            (0.42, 0.90, 0.01),
            (0.43, 0.80, 0.01),
        ]
    )
    assert suggest_threshold(sweep, 0.05) == 0.41


def test_wilson_intervals() -> None:
    # Wilson's score interval for 90/100 at 95%: (0.8256, 0.9448), by the textbook formula.
    interval = wilson(90, 100)
    assert (interval.low, interval.high) == pytest.approx((0.8256, 0.9448), abs=1e-4)
    assert interval.value == 0.9 and (interval.hits, interval.total) == (90, 100)
    # It stays inside [0, 1] at the edges, where a normal approximation would not.
    assert wilson(0, 20).low == 0.0 and 0.0 < wilson(0, 20).high < 0.2
    assert wilson(20, 20).high == pytest.approx(1.0) and wilson(20, 20).low > 0.8
    assert (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)


def test_folds_are_stratified_by_route() -> None:
    samples = [Sample(f"t{i}", route) for i, route in enumerate(["a"] * 6 + ["b"] * 4)]
    folds = folds_of(samples, 2)
    assert sorted(i for fold in folds for i in fold) == list(range(10))
    for fold in folds:
        assert Counter(samples[i].route for i in fold) == {"a": 3, "b": 2}


def test_suggest_threshold_is_none_when_nothing_meets_the_limit() -> None:
    assert suggest_threshold(points([(0.3, 0.9, 0.2), (0.4, 0.8, 0.1)]), 0.05) is None


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


KNOWN = ["pirate", "default"]
GOOD = json.dumps({"text": "Ahoy there", "route": "pirate"})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"text": "unterminated', "line 3: not JSON"),
        (json.dumps({"route": "pirate"}), 'line 3: needs a non-empty "text" or "messages"'),
        (json.dumps({"text": "   ", "route": "pirate"}), "line 3: needs a non-empty"),
        (json.dumps({"text": "hello"}), "line 3: needs a non-empty"),
        (json.dumps(["hello", "pirate"]), "line 3: not an object"),
        (json.dumps({"text": "hello", "route": "cowboy"}), "line 3: route 'cowboy' is not in"),
    ],
)
def test_load_samples_names_the_bad_line(tmp_path: Path, bad: str, message: str) -> None:
    # Line 2 is blank (skipped, but counted).
    path = write(tmp_path / "set.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_samples(path, KNOWN)


def test_load_samples_reports_every_bad_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "set.jsonl",
        [GOOD, "not json", json.dumps({"text": "x", "route": "nope"}), GOOD, "{}"],
    )
    with pytest.raises(ValueError) as info:
        load_samples(path, KNOWN)
    message = str(info.value)
    assert "line 2: not JSON" in message
    assert "line 3: route 'nope' is not in the table" in message
    assert "line 5: needs a non-empty" in message
    assert "line 1" not in message and "line 4" not in message


def test_load_samples_reads_a_good_set(tmp_path: Path) -> None:
    path = write(
        tmp_path / "set.jsonl",
        [GOOD, "", json.dumps({"text": "  What is 2 + 2?  ", "route": "default"})],
    )
    samples = load_samples(path, KNOWN)
    assert [(s.text, s.route) for s in samples] == [
        ("Ahoy there", "pirate"),
        ("What is 2 + 2?", "default"),
    ]


def test_load_samples_refuses_an_empty_set(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.jsonl", ["", "   "])
    with pytest.raises(ValueError, match="has no labelled prompts"):
        load_samples(path, KNOWN)
