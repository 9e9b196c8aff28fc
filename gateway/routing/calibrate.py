"""Evaluate a route table on labelled prompts and suggest a threshold.

The labelled set is JSONL, one `{"text": ..., "route": ...}` per line, `route` a route of the
table or the default route's name (prompts that must reach the base model). The report has
accuracy, each route's precision and recall, the confusion matrix, the share of default
prompts sent to an adapter, and a sweep of one threshold for every route: the suggested
threshold has the best accuracy of those that keep default prompts sent to an adapter at or
under `max_offtopic` (ties: fewer default prompts sent to adapters, then the middle of the
widest run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.routing.classifier import Decision, RouteIndex
from gateway.routing.embedder import Embedder

# Thresholds swept, in steps of 0.01.
SWEEP = np.round(np.arange(0.0, 1.0001, 0.01), 2)


@dataclass(frozen=True)
class Sample:
    """One labelled prompt."""

    text: str
    route: str


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
    """The evaluation of a table on a labelled set."""

    labels: list[str]
    samples: list[Sample]
    decisions: list[Decision]
    accuracy: float
    offtopic_to_adapter: float
    routes: list[RouteStats]
    confusion: list[list[int]]
    sweep: list[SweepPoint]
    suggested_threshold: float | None
    max_offtopic: float
    mistakes: list[tuple[Sample, Decision]] = field(default_factory=list)


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
        text, route = (row.get("text"), row.get("route")) if isinstance(row, dict) else (0, 0)
        if not isinstance(text, str) or not text.strip() or not isinstance(route, str):
            problems.append(f'line {number}: needs a non-empty "text" and a "route"')
        elif route not in known:
            problems.append(f"line {number}: route {route!r} is not in the table")
        else:
            samples.append(Sample(text.strip(), route))
    if problems:
        raise ValueError("; ".join(problems[:10]))
    if not samples:
        raise ValueError(f"{path} has no labelled prompts")
    return samples


def evaluate(
    index: RouteIndex, embedder: Embedder, samples: list[Sample], *, max_offtopic: float = 0.05
) -> Report:
    """Classify every sample as the gateway would, and sweep the threshold."""
    table = index.table
    default = table.default.name
    labels = [route.name for route in table.routes] + [default]
    vectors = embedder.embed([s.text for s in samples])
    decisions: list[Decision] = []
    # Per sample, for the sweep: the rule's route, or the best route, its score, and
    # whether the default's utterances were nearer.
    fixed: list[str | None] = []
    best: list[str] = []
    best_score = np.zeros(len(samples), np.float32)
    default_nearer = np.zeros(len(samples), bool)
    for row, sample in enumerate(samples):
        rule = index.match_rules(sample.text)
        decision = rule if rule is not None else index.decide(vectors[row])
        decisions.append(decision)
        fixed.append(rule.route if rule is not None else None)
        scores = index.scores(vectors[row])
        name = max((r for r in scores if r != default), key=lambda r: scores[r])
        best.append(name)
        best_score[row] = scores[name]
        default_nearer[row] = default in scores and scores[default] > scores[name]
    truth = [s.route for s in samples]
    predicted = [d.route for d in decisions]
    sweep = [
        _sweep_point(float(t), truth, fixed, best, best_score, default_nearer, default)
        for t in SWEEP
    ]
    return Report(
        labels=labels,
        samples=samples,
        decisions=decisions,
        accuracy=_accuracy(truth, predicted),
        offtopic_to_adapter=_offtopic_rate(truth, predicted, default),
        routes=[_route_stats(label, truth, predicted) for label in labels],
        confusion=[
            [
                sum(1 for t, p in zip(truth, predicted, strict=True) if t == a and p == b)
                for b in labels
            ]
            for a in labels
        ],
        sweep=sweep,
        suggested_threshold=suggest_threshold(sweep, max_offtopic),
        max_offtopic=max_offtopic,
        mistakes=[(s, d) for s, d in zip(samples, decisions, strict=True) if s.route != d.route],
    )


def _accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


def _offtopic_rate(truth: Sequence[str], predicted: Sequence[str], default: str) -> float:
    offtopic = [p for t, p in zip(truth, predicted, strict=True) if t == default]
    return sum(p != default for p in offtopic) / len(offtopic) if offtopic else 0.0


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
    threshold: float,
    truth: Sequence[str],
    fixed: Sequence[str | None],
    best: Sequence[str],
    best_score: np.typing.NDArray[np.float32],
    default_nearer: np.typing.NDArray[np.bool_],
    default: str,
) -> SweepPoint:
    predicted = [
        rule if rule is not None else (name if score >= threshold and not nearer else default)
        for rule, name, score, nearer in zip(fixed, best, best_score, default_nearer, strict=True)
    ]
    on_topic = [p for t, p in zip(truth, predicted, strict=True) if t != default]
    return SweepPoint(
        threshold,
        _accuracy(truth, predicted),
        _offtopic_rate(truth, predicted, default),
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
