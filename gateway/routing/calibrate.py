"""Evaluate a route table on labelled prompts and choose its threshold.

A labelled set is JSONL, one object per line: `{"text": ..., "route": ...}` or a chat
`{"messages": [...], "route": ...}` (routed by its last user message, with the earlier user
turns as context), optionally with a `kind` (e.g. `near_miss`) that the report breaks down
by. `route` is a route of the table or the default route's name (prompts that must reach the
base model).

Every sample is classified exactly as the gateway would; the report has accuracy and the
share of default prompts sent to an adapter with Wilson 95% intervals, each route's
precision and recall, the confusion matrix, and a sweep of one threshold for every route.
The suggested threshold has the best accuracy of those that keep default prompts sent to an
adapter at or under `max_offtopic` (ties: fewer default prompts sent to adapters, then the
middle of the widest run). `assess` keeps the discipline: the threshold is chosen on a
tuning set only, and the numbers reported are those of a separate test set.

A table may learn from its tuning prompts too (they are then among its utterances). Its
threshold is then chosen by cross-fitting: the tuning set is cut into folds, and each
prompt is scored by a head trained on the table without the prompts of its fold
(`out_of_fold`), so no prompt is scored by a head that saw it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.routing.classifier import Decision, Evidence, RouteIndex
from gateway.routing.conversation import conversation_of
from gateway.routing.embedder import Embedder
from gateway.routing.table import RouteTable

# Thresholds swept, in steps of 0.01.
SWEEP = np.round(np.arange(0.0, 1.0001, 0.01), 2)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Sample:
    """One labelled prompt (with the chat's earlier user turns, oldest first)."""

    text: str
    route: str
    earlier: tuple[str, ...] = ()
    kind: str = ""


@dataclass(frozen=True)
class Interval:
    """A proportion with its Wilson interval."""

    hits: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else 0.0


def wilson(hits: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """`hits / total` with its Wilson score interval (scipy's)."""
    if total == 0:
        return Interval(0, 0, 0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(hits, total).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(hits, total, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class RouteStats:
    """One route's precision and recall (support: labelled prompts of the route)."""

    route: str
    precision: float
    recall: float
    support: int
    predicted: int


@dataclass(frozen=True)
class SweepPoint:
    """The table's outcome with one threshold for every route."""

    threshold: float
    accuracy: float
    offtopic_to_adapter: float
    on_topic_to_default: float


@dataclass
class Report:
    """The evaluation of a table on a labelled set (at `threshold`: None, the table's)."""

    labels: list[str]
    samples: list[Sample]
    decisions: list[Decision]
    accuracy: Interval
    offtopic: Interval
    routes: list[RouteStats]
    confusion: list[list[int]]
    kinds: dict[str, Interval]
    sweep: list[SweepPoint]
    suggested_threshold: float | None
    max_offtopic: float
    threshold: float | None = None
    mistakes: list[tuple[Sample, Decision]] = field(default_factory=list)

    @property
    def offtopic_to_adapter(self) -> float:
        return self.offtopic.value


def load_samples(path: Path, known: Sequence[str]) -> list[Sample]:
    """Read a labelled JSONL set; every problem names its line."""
    samples: list[Sample] = []
    problems: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: not an object")
            continue
        route, kind = row.get("route"), row.get("kind", "")
        conversation = (
            conversation_of(row, turns=10) if "text" in row or "messages" in row else None
        )
        if conversation is None or not conversation.text or not isinstance(route, str):
            problems.append(f'line {number}: needs a non-empty "text" or "messages", and a "route"')
        elif route not in known:
            problems.append(f"line {number}: route {route!r} is not in the table")
        else:
            kind = kind or ("multi_turn" if conversation.earlier else "")
            samples.append(Sample(conversation.text, route, conversation.earlier, str(kind)))
    if problems:
        raise ValueError("; ".join(problems[:10]))
    if not samples:
        raise ValueError(f"{path} has no labelled prompts")
    return samples


def gather(index: RouteIndex, embedder: Embedder, samples: Sequence[Sample]) -> list[Evidence]:
    """Each sample's evidence, as the gateway gathers it (rules, scores, the conversation's
    scores for a follow-up); every distinct text is embedded once."""
    texts = list(dict.fromkeys(t for s in samples for t in (s.text, *s.earlier)))
    matrix = embedder.embed(texts)
    vectors = {text: matrix[row] for row, text in enumerate(texts)}
    out: list[Evidence] = []
    for sample in samples:
        vector = vectors[sample.text]
        evidence = index.evidence(vector, index.match_rules(sample.text), text=sample.text)
        earlier = index.earlier_to_read(evidence, sample.earlier, sample.text)
        if earlier:
            before = [vectors[t] for t in earlier]
            evidence = index.in_context(evidence, vector, before, (*earlier, sample.text))
        out.append(evidence)
    return out


def evaluate(
    index: RouteIndex,
    samples: list[Sample],
    evidence: Sequence[Evidence],
    *,
    max_offtopic: float = 0.05,
    threshold: float | None = None,
) -> Report:
    """Decide every sample at `threshold` (None: the table's thresholds) and sweep."""
    default = index.default
    labels = [route.name for route in index.table.routes] + [default]
    truth = [s.route for s in samples]
    decisions = [index.conclude(e, threshold) for e in evidence]
    predicted = [d.route for d in decisions]
    sweep = [_sweep_point(index, float(t), truth, evidence) for t in SWEEP]
    kinds = sorted({s.kind for s in samples if s.kind})
    return Report(
        labels=labels,
        samples=samples,
        decisions=decisions,
        accuracy=_accuracy(truth, predicted),
        offtopic=_offtopic(truth, predicted, default),
        routes=[_route_stats(label, truth, predicted) for label in labels],
        confusion=[
            [
                sum(1 for t, p in zip(truth, predicted, strict=True) if t == a and p == b)
                for b in labels
            ]
            for a in labels
        ],
        kinds={
            kind: _accuracy(
                *zip(
                    *[
                        (t, p)
                        for s, t, p in zip(samples, truth, predicted, strict=True)
                        if s.kind == kind
                    ],
                    strict=True,
                )
            )
            for kind in kinds
        },
        sweep=sweep,
        suggested_threshold=suggest_threshold(sweep, max_offtopic),
        max_offtopic=max_offtopic,
        threshold=threshold,
        mistakes=[(s, d) for s, d in zip(samples, decisions, strict=True) if s.route != d.route],
    )


def _accuracy(truth: Sequence[str], predicted: Sequence[str]) -> Interval:
    return wilson(sum(t == p for t, p in zip(truth, predicted, strict=True)), len(truth))


def _offtopic(truth: Sequence[str], predicted: Sequence[str], default: str) -> Interval:
    offtopic = [p for t, p in zip(truth, predicted, strict=True) if t == default]
    return wilson(sum(p != default for p in offtopic), len(offtopic))


def _route_stats(label: str, truth: Sequence[str], predicted: Sequence[str]) -> RouteStats:
    pairs = list(zip(truth, predicted, strict=True))
    hits = sum(1 for t, p in pairs if t == p == label)
    support = sum(1 for t, _ in pairs if t == label)
    chosen = sum(1 for _, p in pairs if p == label)
    return RouteStats(
        label,
        precision=hits / chosen if chosen else 0.0,
        recall=hits / support if support else 0.0,
        support=support,
        predicted=chosen,
    )


def _sweep_point(
    index: RouteIndex, threshold: float, truth: Sequence[str], evidence: Sequence[Evidence]
) -> SweepPoint:
    default = index.default
    predicted = [index.conclude(e, threshold).route for e in evidence]
    on_topic = [p for t, p in zip(truth, predicted, strict=True) if t != default]
    return SweepPoint(
        threshold,
        _accuracy(truth, predicted).value,
        _offtopic(truth, predicted, default).value,
        sum(p == default for p in on_topic) / len(on_topic) if on_topic else 0.0,
    )


def suggest_threshold(sweep: Sequence[SweepPoint], max_offtopic: float) -> float | None:
    """The best-accuracy threshold within `max_offtopic`: ties go to the one sending fewer
    default prompts to adapters (an unrelated answer in an adapter's style is the costlier
    mistake; on-topic prompts that fall back still get the base model), then to the middle
    of the widest run of such thresholds."""
    allowed = [p for p in sweep if p.offtopic_to_adapter <= max_offtopic]
    if not allowed:
        return None
    top = max(p.accuracy for p in allowed)
    safest = min(p.offtopic_to_adapter for p in allowed if p.accuracy == top)
    runs: list[list[float]] = []
    for point in sweep:
        good = point.accuracy == top and point.offtopic_to_adapter == safest
        if good and runs and runs[-1][-1] == round(point.threshold - 0.01, 2):
            runs[-1].append(point.threshold)
        elif good:
            runs.append([point.threshold])
    widest = max(runs, key=len)
    return round(widest[len(widest) // 2], 2)


@dataclass(frozen=True)
class Fold:
    """One fold of the cross-validation: threshold from the other folds, numbers on this."""

    threshold: float | None
    accuracy: float
    offtopic_to_adapter: float
    size: int


@dataclass
class Assessment:
    """Threshold chosen on the tuning set, numbers measured on the test set."""

    tuning: Report
    test: Report
    folds: list[Fold]
    # The tuning prompts were scored out of fold (the table learns from them).
    crossfit: bool = False

    @property
    def threshold(self) -> float | None:
        return self.tuning.suggested_threshold


def folds_of(samples: Sequence[Sample], k: int) -> list[list[int]]:
    """`k` folds of sample positions, stratified by route (every k-th of each route)."""
    folds: list[list[int]] = [[] for _ in range(k)]
    seen: dict[str, int] = {}
    for i, sample in enumerate(samples):
        n = seen.get(sample.route, 0)
        folds[n % k].append(i)
        seen[sample.route] = n + 1
    return folds


# Builds the index of a table (embeds its utterances, trains its head).
Build = Callable[[RouteTable], RouteIndex]


def learned(table: RouteTable, samples: Sequence[Sample]) -> list[Sample]:
    """The single-message samples whose text is an utterance of `table` (learned from)."""
    texts = {u for route in table.routes for u in route.utterances}
    texts.update(table.default.utterances)
    return [s for s in samples if not s.earlier and s.text in texts]


def without_texts(table: RouteTable, texts: Collection[str]) -> RouteTable:
    """`table` with the utterances in `texts` left out (of its routes and its default)."""
    routes = [
        route.model_copy(update={"utterances": [u for u in route.utterances if u not in texts]})
        for route in table.routes
    ]
    default = table.default.model_copy(
        update={"utterances": [u for u in table.default.utterances if u not in texts]}
    )
    return table.model_copy(update={"routes": routes, "default": default})


def out_of_fold(
    build: Build, embedder: Embedder, table: RouteTable, samples: list[Sample], folds: int
) -> list[Evidence]:
    """Each sample's evidence from an index built without the prompts of its fold (the same
    folds as the cross-validation in `assess`)."""
    evidence: dict[int, Evidence] = {}
    for held in folds_of(samples, folds):
        index = build(without_texts(table, {samples[i].text for i in held}))
        scored = gather(index, embedder, [samples[i] for i in held])
        evidence.update(zip(held, scored, strict=True))
    return [evidence[i] for i in range(len(samples))]


def assess(
    index: RouteIndex,
    embedder: Embedder,
    tuning: list[Sample],
    test: list[Sample],
    *,
    max_offtopic: float,
    folds: int = 2,
    crossfit: Build | None = None,
) -> Assessment:
    """Choose the threshold on `tuning` only; report `test` at it, and cross-validate the
    choice on `tuning` (`folds` folds: the threshold of the others, the numbers of each).
    With `crossfit`, the tuning prompts are scored out of fold (`out_of_fold`, at least two
    folds): for a table that learns from them."""
    if crossfit is None:
        tune_evidence = gather(index, embedder, tuning)
    else:
        tune_evidence = out_of_fold(crossfit, embedder, index.table, tuning, max(folds, 2))
    tune_report = evaluate(index, tuning, tune_evidence, max_offtopic=max_offtopic)
    chosen = tune_report.suggested_threshold
    test_report = evaluate(
        index, test, gather(index, embedder, test), max_offtopic=max_offtopic, threshold=chosen
    )
    results: list[Fold] = []
    for held in folds_of(tuning, folds) if folds > 1 else []:
        held_set = set(held)
        rest = [i for i in range(len(tuning)) if i not in held_set]
        fitted = evaluate(
            index,
            [tuning[i] for i in rest],
            [tune_evidence[i] for i in rest],
            max_offtopic=max_offtopic,
        ).suggested_threshold
        scored = evaluate(
            index,
            [tuning[i] for i in held],
            [tune_evidence[i] for i in held],
            max_offtopic=max_offtopic,
            threshold=fitted,
        )
        results.append(Fold(fitted, scored.accuracy.value, scored.offtopic.value, len(held)))
    return Assessment(tune_report, test_report, results, crossfit is not None)
