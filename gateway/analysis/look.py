"""One look at one rollout: its data and stored state in, its verdict and new state out.

The data are running totals since the rollout began. The canary stage compares the
candidate with the stable version *serving at the same time*: stable's totals at the last
look in shadow are the baseline subtracted from then on (what stable did in shadow is
history; when no look saw the shadow stage, stable's answers from then count too). The
tests' running state (the 2x2 e-processes, the latency reference) lives in the state too,
so a new leader resumes where the last one stopped.

Latency (p95, time to first token) is judged as a pass/fail signal: an answer is *slow*
when it took longer than the stable version's p95 so far (plus the SLO's margin). Both
versions are measured against the same threshold, fixed before the answers it judges, so
the exact 2x2 test applies: the candidate is slow more often than stable -> worse. It is
non-inferior when its share of slow answers is shown to exceed stable's by under 5 points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.analysis.evaluate import (
    NOT_IN_SHADOW,
    ONLY_IN_SHADOW,
    Arms,
    SignalVerdict,
    Verdict,
    decide,
    evaluate_mean,
    evaluate_paired,
    evaluate_rate,
    not_applicable,
)
from gateway.analysis.slo import KINDS, RouteSlo, SignalKind, SignalSlo
from gateway.registry.analysis import LatencySample
from gateway.registry.quality import SATISFACTION, Totals

# The share of slow answers (beyond stable's p95 plus margin) the candidate may have over
# stable's and still be non-inferior.
LATENCY_RATE_MARGIN = 0.05
LATENCY_QUANTILE = 0.95
# Latency histogram: log-spaced buckets from 1 ms to about 30 minutes.
_EDGES = np.geomspace(1.0, 2e6, 241)
LATENCY_KINDS = frozenset({SignalKind.LATENCY_P95, SignalKind.TTFT_P95})
# The reward-hacking alarm: what a model scores (proxies) against what users and checks say.
PROXIES = frozenset({SignalKind.REWARD_MEAN, SignalKind.JUDGE_WIN_RATE})
TRUTHS = frozenset({SignalKind.SATISFACTION_RATE, SignalKind.VERIFIER_PASS})


@dataclass
class Data:
    """What one look reads: the quality aggregates (by (variant, signal)), requests and 5xx
    per variant, and the answers' latencies since the last look."""

    aggregates: dict[tuple[str, str], Totals]
    requests: dict[str, Totals]
    latencies: list[LatencySample] = field(default_factory=list)


@dataclass(frozen=True)
class Position:
    """Where the rollout is, as the look saw it."""

    stage: str  # shadow or canary
    step: int
    minimums_met: bool
    step_elapsed_s: float


def look(
    slo: RouteSlo, position: Position, data: Data, state: dict[str, Any]
) -> tuple[Verdict, dict[str, Any]]:
    """The rollout's verdict now, and the state to store for the next look."""
    state = dict(state)
    if position.stage == "shadow":
        # Stable's totals before the canary began: the canary stage subtracts them.
        state["shadow_stable"] = _stable_snapshot(data)
    elif "baseline" not in state:
        state["baseline"] = state.pop("shadow_stable", None) or {}
        state["tests"] = {}
    tests: dict[str, Any] = dict(state.get("tests", {}))
    latency: dict[str, Any] = dict(state.get("latency", {}))
    verdicts: list[SignalVerdict] = []
    for signal in slo.signals:
        alpha = slo.alpha_of(signal)
        if signal.signal in LATENCY_KINDS:
            latency[signal.name] = _absorb_latency(signal, latency.get(signal.name), data)
        if position.stage == "shadow":
            verdicts.append(_shadow(signal, alpha, data))
            continue
        if signal.signal in ONLY_IN_SHADOW:
            verdicts.append(not_applicable(signal, alpha, "judged on shadow pairs only"))
            continue
        arms = _arms(signal, data, state, latency)
        if KINDS[signal.signal].unit == "score":
            verdicts.append(evaluate_mean(signal, alpha, arms))
            continue
        rate, tests[signal.name] = evaluate_rate(
            signal,
            alpha,
            arms,
            tests.get(signal.name),
            rate_margin=LATENCY_RATE_MARGIN if signal.signal in LATENCY_KINDS else None,
        )
        if signal.signal in LATENCY_KINDS:
            _latency_view(signal, rate, latency[signal.name])
        verdicts.append(rate)
    state["tests"] = tests
    state["latency"] = latency
    verdict = decide(
        slo, verdicts, minimums_met=position.minimums_met, step_elapsed_s=position.step_elapsed_s
    )
    verdict.alarm = _alarm(slo, verdicts, state)
    return verdict, state


def _alarm(slo: RouteSlo, verdicts: list[SignalVerdict], state: dict[str, Any]) -> str | None:
    """The reward-hacking alarm: a reward or judge signal significantly up while a
    satisfaction or verifier signal is significantly down (each at the alarm's alpha;
    once a side has crossed it stays crossed for the rollout)."""
    threshold = math.log(1 / slo.analysis.alarm_alpha)
    crossed = state.setdefault("alarm", {"up": [], "down": []})
    for s in verdicts:
        kind = SignalKind(s.signal)
        if kind in PROXIES and s.log_e_better >= threshold and s.name not in crossed["up"]:
            crossed["up"].append(s.name)
        if kind in TRUTHS and s.log_e >= threshold and s.name not in crossed["down"]:
            crossed["down"].append(s.name)
    if crossed["up"] and crossed["down"]:
        return (
            f"{', '.join(crossed['up'])} significantly up while "
            f"{', '.join(crossed['down'])} significantly down"
        )
    return None


def _stable_snapshot(data: Data) -> dict[str, Any]:
    """Stable's running totals now (the candidate has none before the canary)."""
    return {
        "aggregates": {
            f"{v}|{s}": t.as_list() for (v, s), t in data.aggregates.items() if v == "stable"
        },
        "requests": {v: t.as_list() for v, t in data.requests.items() if v == "stable"},
    }


def _shadow(signal: SignalSlo, alpha: float, data: Data) -> SignalVerdict:
    if signal.signal in NOT_IN_SHADOW:
        return not_applicable(signal, alpha, "no user sees the candidate in shadow")
    scorer = signal.resolved_scorer or ""
    paired = data.aggregates.get(("paired", scorer), Totals())
    return evaluate_paired(signal, alpha, paired, data.aggregates.get(("stable", scorer)))


def _arms(signal: SignalSlo, data: Data, state: dict[str, Any], latency: dict[str, Any]) -> Arms:
    """The signal's canary-stage totals per arm (the baseline taken off)."""
    baseline = state.get("baseline", {})
    if signal.signal == SignalKind.ERROR_RATE:
        base = baseline.get("requests", {})
        return Arms(
            data.requests.get("canary", Totals()).minus(Totals.from_list(base.get("canary"))),
            data.requests.get("stable", Totals()).minus(Totals.from_list(base.get("stable"))),
        )
    if signal.signal in LATENCY_KINDS:
        slow = latency[signal.name]["slow"]
        return Arms(Totals.from_list(slow["canary"]), Totals.from_list(slow["stable"]))
    key = SATISFACTION if signal.signal == SignalKind.SATISFACTION_RATE else signal.resolved_scorer
    base = baseline.get("aggregates", {})
    return Arms(
        _since(data, "canary", key or "", base),
        _since(data, "stable", key or "", base),
    )


def _since(data: Data, variant: str, signal: str, base: dict[str, Any]) -> Totals:
    """A signal's totals of one variant with the baseline taken off."""
    now = data.aggregates.get((variant, signal), Totals())
    return now.minus(Totals.from_list(base.get(f"{variant}|{signal}")))


def _absorb_latency(signal: SignalSlo, raw: dict[str, Any] | None, data: Data) -> dict[str, Any]:
    """Judge the new answers against stable's p95 so far (plus margin), then add stable's
    to the histogram that sets the next threshold."""
    state = raw or {
        "hist": [0] * (len(_EDGES) + 1),
        "canary_hist": [0] * (len(_EDGES) + 1),
        "slow": {"canary": Totals().as_list(), "stable": Totals().as_list()},
    }
    hist = list(state["hist"])
    canary_hist = list(state["canary_hist"])
    threshold = _threshold(signal, hist)
    slow = {arm: Totals.from_list(state["slow"][arm]) for arm in ("canary", "stable")}
    ttft = signal.signal == SignalKind.TTFT_P95
    for sample in data.latencies:
        value = sample.ttft_ms if ttft else sample.latency_ms
        if value is None or sample.variant not in slow:
            continue
        if threshold is not None:
            slow[sample.variant] = slow[sample.variant].plus(0.0, value <= threshold)
        bucket = int(np.searchsorted(_EDGES, value))
        if sample.variant == "stable":
            hist[bucket] += 1
        else:
            canary_hist[bucket] += 1
    return {
        "hist": hist,
        "canary_hist": canary_hist,
        "slow": {arm: t.as_list() for arm, t in slow.items()},
        "threshold_ms": threshold,
    }


def _threshold(signal: SignalSlo, hist: list[int]) -> float | None:
    """Stable's p95 so far plus the margin (None until stable has `min_samples`)."""
    p95 = _quantile(hist, LATENCY_QUANTILE)
    if p95 is None or sum(hist) < signal.min_samples:
        return None
    margin = signal.margin
    return p95 * (1 + abs(margin.value)) if margin.relative else p95 + abs(margin.value)


def _quantile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return float(_EDGES[min(i, len(_EDGES) - 1)])
    return float(_EDGES[-1])


def _latency_view(signal: SignalSlo, verdict: SignalVerdict, state: dict[str, Any]) -> None:
    """Show the p95s in milliseconds beside the slow-answer test. The ceiling and `max`
    act on the candidate's observed p95 (a percentile has no exact interval here)."""
    p95 = _quantile(state["canary_hist"], LATENCY_QUANTILE)
    n = sum(state["canary_hist"])
    verdict.candidate_value = p95
    verdict.stable_value = _quantile(state["hist"], LATENCY_QUANTILE)
    threshold = state.get("threshold_ms")
    if threshold is not None:
        verdict.reason += f" (slow: over {threshold:.0f} ms)"
    if p95 is None:
        return
    ceiling = signal.ceiling
    if ceiling is not None and n >= ceiling.min_samples and p95 >= ceiling.value:
        verdict.decision = "fail"
        verdict.reason = f"hard ceiling: p95 {p95:.0f} ms over {n} answers >= {ceiling.value:g} ms"
    elif signal.max is not None and n >= signal.min_samples and p95 > signal.max:
        verdict.decision = "fail"
        verdict.reason = f"p95 {p95:.0f} ms over {n} answers is above its maximum {signal.max:g} ms"
