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
    SweepPoint,
    evaluate,
    load_samples,
    suggest_threshold,
)
from gateway.routing.classifier import RouteIndex
from gateway.routing.embedder import DIMENSIONS, OnnxEmbedder, Vectors, load_embedder
from gateway.routing.table import (
    DEMO_TABLE,
    RouteTable,
    demo_eval_path,
    parse_table,
    read_table_source,
)


@dataclass
class BatchMemo:
    """The real embedder; a batch already embedded (same texts, same order) is not redone.

    Only whole batches are reused, so every vector is exactly what the embedder gives for
    that batch: the table's utterances and the labelled set are each embedded once.
    """

    inner: OnnxEmbedder
    batches: dict[tuple[str, ...], Vectors] = field(default_factory=dict)

    def embed(self, texts: list[str]) -> Vectors:
        key = tuple(texts)
        if key not in self.batches:
            self.batches[key] = self.inner.embed(texts)
        return self.batches[key]


@dataclass(frozen=True)
class Demo:
    table: RouteTable
    rows: list[dict[str, object]]
    index: RouteIndex
    report: Report
    embedder: BatchMemo


def utterances_of(table: RouteTable) -> list[str]:
    """Every utterance, in the order `RouteIndex.build` embeds them."""
    texts = [text for route in table.routes for text in route.utterances]
    return texts + table.default.utterances


def known_routes(table: RouteTable) -> list[str]:
    return [route.name for route in table.routes] + [table.default.name]


@pytest.fixture(scope="module")
def demo() -> Demo:
    table = parse_table(read_table_source(DEMO_TABLE))
    lines = demo_eval_path().read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    embedder = BatchMemo(load_embedder(DEFAULT_CACHE_DIR))

    async def embed_many(texts: list[str]) -> Vectors:
        return embedder.embed(texts)

    index = asyncio.run(RouteIndex.build(table, embed_many))
    samples = load_samples(demo_eval_path(), known_routes(table))
    report = evaluate(index, embedder, samples)
    return Demo(table, rows, index, report, embedder)


def test_labelled_set_is_large_and_balanced(demo: Demo) -> None:
    table = demo.table
    assert len(demo.rows) >= 300
    assert len(demo.report.samples) == len(demo.rows)  # no line was dropped
    counts = Counter(str(row["route"]) for row in demo.rows)
    assert set(counts) <= set(known_routes(table))
    adapter_routes = [name for name in counts if name != table.default.name]
    assert len(adapter_routes) >= 4
    assert all(counts[name] >= 50 for name in adapter_routes), counts
    assert {route.name for route in table.routes} == set(adapter_routes)
    assert counts[table.default.name] >= 80


def test_labelled_set_has_no_duplicates(demo: Demo) -> None:
    texts = [str(row["text"]).strip().casefold() for row in demo.rows]
    assert len(set(texts)) == len(texts)


def test_labelled_set_repeats_no_table_utterance(demo: Demo) -> None:
    utterances = {text.casefold() for text in utterances_of(demo.table)}
    repeated = [s.text for s in demo.report.samples if s.text.casefold() in utterances]
    assert repeated == []


def test_labelled_set_paraphrases_no_table_utterance(demo: Demo) -> None:
    utterances = utterances_of(demo.table)
    samples = demo.report.samples
    # The very batches the index and the evaluation embedded (reused, not recomputed).
    table_vectors = demo.embedder.embed(utterances)
    sample_vectors = demo.embedder.embed([s.text for s in samples])
    assert table_vectors.shape == (len(utterances), DIMENSIONS)
    assert len(demo.embedder.batches) == 2
    similarities = sample_vectors @ table_vectors.T
    nearest = similarities.argmax(axis=1)
    too_close = [
        (round(float(similarities[i, j]), 3), samples[i].text, utterances[j])
        for i, j in enumerate(nearest)
        if similarities[i, j] >= 0.90
    ]
    assert too_close == []


def test_demo_table_routes_the_labelled_set_well(demo: Demo) -> None:
    report = demo.report
    assert report.labels == known_routes(demo.table)
    assert report.max_offtopic == 0.05
    assert report.accuracy >= 0.90, report.confusion
    assert report.offtopic_to_adapter <= 0.05, report.confusion
    # No route overrides the table's threshold, so the sweep point at that threshold is
    # the evaluation itself.
    assert all(route.threshold is None for route in demo.table.routes)
    point = next(p for p in report.sweep if p.threshold == demo.table.threshold)
    assert point.accuracy == pytest.approx(report.accuracy)
    assert point.offtopic_to_adapter == pytest.approx(report.offtopic_to_adapter)


def test_decisions_are_the_index_decisions(demo: Demo) -> None:
    report = demo.report
    vectors = demo.embedder.embed([s.text for s in report.samples])
    for sample, vector, decision in zip(report.samples, vectors, report.decisions, strict=True):
        expected = demo.index.match_rules(sample.text) or demo.index.decide(vector)
        assert decision.route == expected.route
    assert [s for s, _ in report.mistakes] == [
        s for s, d in zip(report.samples, report.decisions, strict=True) if s.route != d.route
    ]


def test_confusion_matrix_agrees_with_accuracy(demo: Demo) -> None:
    report = demo.report
    matrix = np.array(report.confusion)
    n = len(report.samples)
    assert matrix.shape == (len(report.labels), len(report.labels))
    assert int(matrix.sum()) == n
    assert int(np.trace(matrix)) / n == pytest.approx(report.accuracy)
    assert len(report.mistakes) == n - int(np.trace(matrix))
    truth = Counter(s.route for s in report.samples)
    routed = Counter(d.route for d in report.decisions)
    for i, label in enumerate(report.labels):
        assert int(matrix[i].sum()) == truth[label]
        assert int(matrix[:, i].sum()) == routed[label]
    default = report.labels.index(demo.table.default.name)
    offtopic = 1 - matrix[default, default] / matrix[default].sum()
    assert float(offtopic) == pytest.approx(report.offtopic_to_adapter)


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
    # A threshold of 0 sends every unmatched prompt to an adapter unless the default is
    # nearer; 1 sends every unmatched prompt to the default route.
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
        (json.dumps({"route": "pirate"}), 'line 3: needs a non-empty "text" and a "route"'),
        (json.dumps({"text": "   ", "route": "pirate"}), "line 3: needs a non-empty"),
        (json.dumps({"text": "hello"}), "line 3: needs a non-empty"),
        (json.dumps(["hello", "pirate"]), "line 3: needs a non-empty"),
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
