"""One look at one rollout: each signal's verdict, then the rollout's.

Per signal, candidate against the stable version serving at the same time:

1. **Too few samples** (under `min_samples` in either arm): `wait`. A hard ceiling is still
   checked: the candidate's observed value at or beyond `ceiling.value` over at least
   `ceiling.min_samples` requests fails the signal at once, like a circuit breaker.
2. **Deterioration**: the signal's anytime-valid test of "the candidate is worse than
   stable" reaches 1/alpha_k (alpha_k: the signal's share of the rollout's alpha): `fail`.
   Pass/fail signals use the exact 2x2 e-process; means the one-sided normal mixture.
3. **Absolute bounds**: the candidate's own interval wholly beyond `min`/`max`: `fail`.
4. **Non-inferiority**: the interval of candidate minus stable wholly on the good side of
   the margin, and the candidate's interval within its bounds: `pass`.
5. Otherwise `wait`: the evidence is not in yet.

In shadow, the quality signals are judged on shadow pairs (the same request answered by
both versions): the mean of their paired differences (the judge's win rate against 0.5).
Signals no user sees in shadow (errors, latency, satisfaction) wait for the canary.

The rollout fails when a critical signal fails, or `noncritical_failures` others do. It
passes a step when the step's minimums (samples, duration) are met and every signal that is
not a dry run passes. A step past `max_step_duration_s` without passing is inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.analysis.sequential import (
    ALPHA_OPT,
    N_OPT,
    BlockTest,
    Interval,
    Moments,
    bernoulli_cs,
    best_rho,
    compare_means,
    mean_cs,
    normal_log_mixture,
)
from gateway.analysis.slo import RouteSlo, SignalKind, SignalSlo
from gateway.registry.quality import Totals

Decision = Literal["pass", "fail", "wait", "n/a"]
Outcome = Literal["pass", "fail", "wait", "inconclusive"]
# Signals a shadow copy cannot measure: no user sees its answers.
NOT_IN_SHADOW = frozenset(
    {SignalKind.ERROR_RATE, SignalKind.LATENCY_P95, SignalKind.TTFT_P95,
     SignalKind.SATISFACTION_RATE}
)  # fmt: skip
# Signals only shadow pairs measure (the pairwise judge needs both answers to one request).
ONLY_IN_SHADOW = frozenset({SignalKind.JUDGE_WIN_RATE})
# A pair's share the candidate is judged against for the pairwise judge (a tie).
JUDGE_EVEN = 0.5


@dataclass(frozen=True)
class Arms:
    """A signal's data: the candidate's and stable's running sums (pass/fail signals count
    good outcomes as passes and bad ones as fails)."""

    candidate: Totals
    stable: Totals


@dataclass
class SignalVerdict:
    """One signal's verdict at one look, with everything it rests on."""

    name: str
    signal: str
    critical: bool
    dry_run: bool
    decision: Decision
    reason: str
    candidate_n: int = 0
    stable_n: int = 0
    candidate_value: float | None = None
    stable_value: float | None = None
    # Candidate minus stable, in the signal's units, and its interval.
    difference: float | None = None
    interval: tuple[float, float] | None = None
    margin: float | None = None
    alpha: float = 0.0
    # log e-value of "the candidate is worse"; the test fires at log(1/alpha).
    log_e: float = 0.0
    # log e-value of "the candidate is better" (means only: the reward-hacking alarm).
    log_e_better: float = 0.0
    threshold: float = 0.0
    paired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    """The rollout's verdict at one look."""

    outcome: Outcome
    reason: str
    signals: list[SignalVerdict] = field(default_factory=list)
    # Why the reward-hacking alarm is raised (None: it is not).
    alarm: str | None = None


def _rate(t: Totals) -> tuple[int, float | None]:
    n = t.passes + t.fails
    return n, (t.passes / n if n else None)


def _margin_good(slo: SignalSlo, stable_value: float | None) -> float:
    """The allowed change of candidate minus stable, in good-direction units (<= 0)."""
    margin = slo.margin
    size = abs(margin.value)
    if margin.relative:
        size *= abs(stable_value) if stable_value is not None else 0.0
    return -size


def not_applicable(slo: SignalSlo, alpha: float, why: str) -> SignalVerdict:
    """A signal this stage does not measure: shown, never blocking."""
    verdict = _base(slo, alpha, 0, 0, None, None)
    verdict.decision = "n/a"
    verdict.reason = why
    return verdict


def evaluate_rate(
    slo: SignalSlo,
    alpha: float,
    arms: Arms,
    state: dict[str, Any] | None,
    *,
    rate_margin: float | None = None,
) -> tuple[SignalVerdict, dict[str, Any]]:
    """A pass/fail signal, candidate against stable (the exact 2x2 e-process).

    `rate_margin`: the margin on the rate itself when the SLO's margin went elsewhere (the
    latency threshold); the SLO's bounds and ceiling are then not rates and are left to the
    caller."""
    higher = slo.resolved_direction == "higher"
    test = BlockTest.from_dict(state)
    n_c, good_c = _rate(arms.candidate)
    n_s, good_s = _rate(arms.stable)
    bad_c, bad_s = arms.candidate.fails, arms.stable.fails
    # What arrived since the last look; counts that went down (a reset) start a new test.
    seen_c, seen_c_bad, seen_s, seen_s_bad = test.seen
    if n_c < seen_c or n_s < seen_s:
        test = BlockTest()
        seen_c = seen_c_bad = seen_s = seen_s_bad = 0
    test.update(n_c - seen_c, bad_c - seen_c_bad, n_s - seen_s, bad_s - seen_s_bad)

    def natural(good: float | None) -> float | None:
        return None if good is None else (good if higher else 1 - good)

    verdict = _base(slo, alpha, n_c, n_s, natural(good_c), natural(good_s))
    verdict.log_e = test.log_e
    own: Interval | None = None
    good: tuple[float, float] | None = None
    if n_c:
        # Each arm's interval: most of alpha to the candidate, whose sample is the smaller.
        cand = bernoulli_cs(arms.candidate.passes, n_c, 0.75 * alpha)
        own = cand if higher else Interval(1 - cand.hi, 1 - cand.lo)
        if n_s:
            stab = bernoulli_cs(arms.stable.passes, n_s, 0.25 * alpha)
            good = (cand.lo - stab.hi, cand.hi - stab.lo)  # good-rate difference
            verdict.difference = (good_c or 0.0) - (good_s or 0.0)
            verdict.interval = good if higher else (-good[1], -good[0])
            if not higher:
                verdict.difference = -verdict.difference
    value = natural(good_c)
    if rate_margin is not None:
        own = value = None
    _decide(slo, verdict, good, own, value, rate_margin=rate_margin)
    return verdict, test.to_dict()


def evaluate_mean(slo: SignalSlo, alpha: float, arms: Arms) -> SignalVerdict:
    """A numeric signal (reward, judge grade), candidate against stable."""
    sign = 1.0 if slo.resolved_direction == "higher" else -1.0
    cand = Moments.of(arms.candidate.count, arms.candidate.total, arms.candidate.total_sq)
    stab = Moments.of(arms.stable.count, arms.stable.total, arms.stable.total_sq)
    verdict = _base(
        slo, alpha, cand.n, stab.n, cand.mean if cand.n else None, stab.mean if stab.n else None
    )
    if cand.n < 2 or stab.n < 2:
        verdict.reason = _too_few(slo, cand.n, stab.n)
        return verdict
    good_c = Moments(cand.n, sign * cand.mean, cand.var)
    good_s = Moments(stab.n, sign * stab.mean, stab.var)
    comparison = compare_means(good_c, good_s, alpha)
    verdict.log_e = comparison.log_e_worse
    verdict.log_e_better = comparison.log_e_better
    lo, hi = comparison.interval.lo, comparison.interval.hi
    verdict.difference = cand.mean - stab.mean
    verdict.interval = (lo, hi) if sign > 0 else (-hi, -lo)
    own = mean_cs(cand, alpha)
    _decide(slo, verdict, (lo, hi), own, cand.mean)
    return verdict


def evaluate_paired(
    slo: SignalSlo, alpha: float, paired: Totals, stable: Totals | None
) -> SignalVerdict:
    """A quality signal in shadow: the mean of its paired differences (candidate minus
    stable on the same request), or the pairwise judge's win rate against a tie."""
    sign = 1.0 if slo.resolved_direction == "higher" else -1.0
    center = JUDGE_EVEN if slo.signal == SignalKind.JUDGE_WIN_RATE else 0.0
    pairs = Moments.of(paired.count, paired.total, paired.total_sq)
    stable_mean = stable.total / stable.count if stable is not None and stable.count else None
    verdict = _base(slo, alpha, pairs.n, pairs.n, None, stable_mean)
    verdict.paired = True
    if pairs.n < 2:
        verdict.reason = f"{pairs.n} of {slo.min_samples} shadow pairs"
        return verdict
    shift = sign * (pairs.mean - center)
    sigma = max(math.sqrt(pairs.var), 1e-9)
    s_worse = -shift / sigma * pairs.n
    rho = best_rho(N_OPT, ALPHA_OPT, one_sided=True)
    verdict.log_e = normal_log_mixture(s_worse, pairs.n, rho, one_sided=True)
    verdict.log_e_better = normal_log_mixture(-s_worse, pairs.n, rho, one_sided=True)
    own = mean_cs(pairs, alpha)
    verdict.difference = pairs.mean - center
    verdict.interval = (own.lo - center, own.hi - center)
    ends = sorted((sign * (own.lo - center), sign * (own.hi - center)))
    _decide(slo, verdict, (ends[0], ends[1]), None, None)
    return verdict


def _base(
    slo: SignalSlo,
    alpha: float,
    n_c: int,
    n_s: int,
    value_c: float | None,
    value_s: float | None,
) -> SignalVerdict:
    return SignalVerdict(
        name=slo.name,
        signal=slo.signal.value,
        critical=slo.critical,
        dry_run=slo.dry_run,
        decision="wait",
        reason="",
        candidate_n=n_c,
        stable_n=n_s,
        candidate_value=value_c,
        stable_value=value_s,
        alpha=alpha,
        threshold=math.log(1 / alpha),
    )


def _too_few(slo: SignalSlo, n_c: int, n_s: int) -> str:
    return f"{n_c} candidate and {n_s} stable samples of the {slo.min_samples} each it needs"


def _decide(
    slo: SignalSlo,
    verdict: SignalVerdict,
    good_interval: tuple[float, float] | None,
    own: Interval | None,
    value: float | None,
    *,
    rate_margin: float | None = None,
) -> None:
    """Steps 1-5 of the module's rules, on values already turned to the good direction."""
    ceiling = slo.ceiling
    lower_better = slo.resolved_direction == "lower"
    if ceiling is not None and value is not None and verdict.candidate_n >= ceiling.min_samples:
        beyond = value >= ceiling.value if lower_better else value <= ceiling.value
        if beyond:
            verdict.decision = "fail"
            verdict.reason = (
                f"hard ceiling: {value:.4g} over {verdict.candidate_n} candidate samples "
                f"is at or beyond {ceiling.value:g}"
            )
            return
    too_few = verdict.candidate_n < slo.min_samples or verdict.stable_n < slo.min_samples
    if too_few or good_interval is None:
        verdict.reason = _too_few(slo, verdict.candidate_n, verdict.stable_n)
        return
    if rate_margin is None:
        margin = _margin_good(slo, verdict.stable_value)
        verdict.margin = math.copysign(-margin, slo.margin.value)
    else:
        margin = -rate_margin
        verdict.margin = rate_margin
    if verdict.log_e >= verdict.threshold:
        verdict.decision = "fail"
        verdict.reason = (
            f"worse than stable: e-value {math.exp(min(verdict.log_e, 700)):.3g} reached "
            f"1/alpha = {1 / verdict.alpha:.3g}"
        )
        return
    if own is not None:
        if slo.min is not None and own.hi < slo.min:
            verdict.decision = "fail"
            verdict.reason = f"below its minimum {slo.min:g}: interval up to {own.hi:.4g}"
            return
        if slo.max is not None and own.lo > slo.max:
            verdict.decision = "fail"
            verdict.reason = f"above its maximum {slo.max:g}: interval from {own.lo:.4g}"
            return
    lo = good_interval[0]
    within = own is None or (
        (slo.min is None or own.lo >= slo.min) and (slo.max is None or own.hi <= slo.max)
    )
    if lo > margin and within:
        verdict.decision = "pass"
        verdict.reason = f"non-inferior: difference at least {lo:+.4g} > margin {margin:+.4g}"
        return
    verdict.reason = (
        f"not yet shown non-inferior: difference from {lo:+.4g} (margin {margin:+.4g})"
        if lo <= margin
        else "not yet shown within its bounds"
    )


def decide(
    slo: RouteSlo,
    signals: list[SignalVerdict],
    *,
    minimums_met: bool,
    step_elapsed_s: float,
) -> Verdict:
    """The rollout's verdict from its signals' (see the module docstring)."""
    live = [s for s in signals if not s.dry_run and s.decision != "n/a"]
    failing = [s for s in live if s.decision == "fail"]
    critical = [s for s in failing if s.critical]
    if critical or len(failing) >= slo.analysis.noncritical_failures:
        names = ", ".join(s.name for s in (critical or failing))
        return Verdict("fail", f"failing: {names}", signals)
    if minimums_met and all(s.decision == "pass" for s in live):
        return Verdict("pass", "every signal is non-inferior within its margin", signals)
    waiting = [s.name for s in live if s.decision != "pass"]
    if minimums_met and step_elapsed_s >= slo.analysis.max_step_duration_s:
        return Verdict(
            "inconclusive",
            f"{step_elapsed_s:.0f} s in the step without evidence for: {', '.join(waiting)}",
            signals,
        )
    if not minimums_met:
        return Verdict("wait", "the step's minimums are not met yet", signals)
    return Verdict("wait", f"waiting for evidence: {', '.join(waiting)}", signals)
