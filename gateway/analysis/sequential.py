"""Anytime-valid statistics: tests and intervals that stay valid however often they are read.

A rollout's analysis looks at its data every second and may act at any look, so a test must
keep its error rate under optional stopping; a fixed-sample test read again and again does
not (a z-test checked every 50 requests rolls back 40-49% of identical versions). Three tools:

- **Pass/fail, candidate against stable: an exact e-process for 2x2 tables** (Turner, Ly and
  Grünwald, "Generic E-variables for exact sequential k-sample tests that allow for optional
  stopping", 2024). Data arrive in blocks (what each arm saw since the last look). For a
  block with n_c candidate and n_s stable outcomes, of which x_c and x_s are bad, and
  predictable guesses q_c > q_s of the arms' bad rates (from earlier blocks only),

      E = q_c^x_c (1-q_c)^(n_c-x_c) q_s^x_s (1-q_s)^(n_s-x_s) / (q0^(x_c+x_s) (1-q0)^(n-x_c-x_s))

  with q0 = (n_c q_c + n_s q_s) / n. Under "the candidate is bad no more often than stable",
  E[E] <= 1 for every block (by the AM-GM inequality, whatever the common rate), so the
  running product is a test supermartingale: P(it ever reaches 1/alpha) <= alpha (Ville).
  It is exact at every sample size (no normal approximation), needs only counts per look,
  and a look that missed some data (a new leader after a crash) takes the gap as one block.
- **Pass/fail, one arm: the beta-binomial mixture confidence sequence** (Howard, Ramdas,
  McAuliffe and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
  2021), as in the `confseq` package's `bernoulli_confidence_interval`; exact for Bernoulli
  data. It bounds each arm for non-inferiority and absolute bounds.
- **Means (reward, judge grades): the normal mixture** (Robbins; the mixture SPRT), on the
  difference of means with Welch's variance, in units of the larger arm's spread (so one
  tuning serves every scale). It rests on the central limit theorem: a signal's tests count
  only from its `min_samples` per arm (30 by default).

The formulas follow `confseq`'s (`normal_log_mixture`, `beta_binomial_log_mixture`,
`bernoulli_confidence_interval`); the unit tests check them against that package.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln, log_ndtr

# The sample size each mixture is tuned for: its intervals are tightest about there.
N_OPT = 100
# The alpha each mixture is tuned for (the bounds stay valid at every alpha).
ALPHA_OPT = 0.05
_EPS = 1e-12
# A block with more candidate outcomes than twice this is split into sub-blocks of about
# this many (at most MAX_SUB_BLOCKS of them).
SUB_BLOCK = 5
MAX_SUB_BLOCKS = 64


def best_rho(v_opt: float, alpha: float, *, one_sided: bool) -> float:
    """The normal mixture's precision that makes its boundary tightest at `v_opt`."""
    if one_sided:
        alpha = 2 * alpha
    log_inv = math.log(1 / alpha)
    return v_opt / (2 * log_inv + math.log(1 + 2 * log_inv))


def normal_log_mixture(s: float, v: float, rho: float, *, one_sided: bool) -> float:
    """The log of the normal mixture supermartingale at sum `s` and intrinsic time `v`.

    One-sided, it grows with evidence that `s` is positive; two-sided, either sign."""
    if one_sided:
        return (
            0.5 * math.log(4 * rho / (v + rho))
            + s * s / (2 * (v + rho))
            + float(log_ndtr(s / math.sqrt(v + rho)))
        )
    return 0.5 * math.log(rho / (v + rho)) + s * s / (2 * (v + rho))


def normal_mixture_bound(v: float, alpha: float, rho: float) -> float:
    """The two-sided normal mixture's boundary on |s| at intrinsic time `v`."""
    return math.sqrt((v + rho) * (math.log(1 + v / rho) + 2 * math.log(1 / alpha)))


def bernoulli_log_mixture(
    successes: float, n: int, p: float, *, t_opt: float = N_OPT, alpha_opt: float = ALPHA_OPT
) -> float:
    """The log of the two-sided beta-binomial mixture supermartingale of Bernoulli(p) data."""
    g, h = p, 1 - p
    s = successes - n * p
    v = n * p * (1 - p)
    r = max(best_rho(p * (1 - p) * t_opt, alpha_opt, one_sided=False) - g * h, 1e-3 * g * h)
    return (
        -((v + h * s) / h) * math.log(g)
        - ((v - g * s) / g) * math.log(h)
        + float(betaln((r + v - g * s) / g, (r + v + h * s) / h))
        - float(betaln(r / g, r / h))
    )


@dataclass(frozen=True)
class Interval:
    """A confidence interval (valid at every look: a confidence sequence)."""

    lo: float
    hi: float


def bernoulli_cs(
    successes: int, n: int, alpha: float, *, t_opt: float = N_OPT, alpha_opt: float = ALPHA_OPT
) -> Interval:
    """Where the success rate is, with probability 1 - alpha at every n at once."""
    if n <= 0:
        return Interval(0.0, 1.0)
    threshold = math.log(1 / alpha)
    p_hat = successes / n

    def excess(p: float) -> float:
        return bernoulli_log_mixture(successes, n, p, t_opt=t_opt, alpha_opt=alpha_opt) - threshold

    lo = 0.0
    if p_hat > 0 and excess(_EPS) > 0:
        lo = brentq(excess, _EPS, min(p_hat, 1 - _EPS), xtol=1e-10)
    hi = 1.0
    if p_hat < 1 and excess(1 - _EPS) > 0:
        hi = brentq(excess, max(p_hat, _EPS), 1 - _EPS, xtol=1e-10)
    return Interval(lo, hi)


@dataclass
class BlockTest:
    """The exact 2x2 e-process for "the candidate's outcomes are bad more often than
    stable's", fed with what each look saw; its state is stored with each verdict.

    A block needs outcomes of both arms (one arm alone says nothing about the other): what
    a look saw of one arm only waits, pending, until the other arm has something too. When
    a block closes depends only on how many outcomes each arm had, never on what they were,
    so the sequence stays valid."""

    log_e: float = 0.0
    # What earlier blocks held: the guesses of the next block come from these only.
    candidate_n: int = 0
    candidate_bad: int = 0
    stable_n: int = 0
    stable_bad: int = 0
    # Seen, not in a block yet.
    pending_candidate_n: int = 0
    pending_candidate_bad: int = 0
    pending_stable_n: int = 0
    pending_stable_bad: int = 0

    @property
    def seen(self) -> tuple[int, int, int, int]:
        """Everything taken in: (candidate n, candidate bad, stable n, stable bad)."""
        return (
            self.candidate_n + self.pending_candidate_n,
            self.candidate_bad + self.pending_candidate_bad,
            self.stable_n + self.pending_stable_n,
            self.stable_bad + self.pending_stable_bad,
        )

    def update(self, candidate_n: int, candidate_bad: int, stable_n: int, stable_bad: int) -> None:
        """Take what arrived since the last look in; close a block once both arms have some.

        A large block (a first look at a pile of data, a new leader after a gap) is split
        into sub-blocks in a random order first: under the null the outcomes within it are
        exchangeable, so any order independent of them is a valid sequence, and the guesses
        learn along it. The order is seeded by the counts: the same data, the same verdict."""
        self.pending_candidate_n += candidate_n
        self.pending_candidate_bad += candidate_bad
        self.pending_stable_n += stable_n
        self.pending_stable_bad += stable_bad
        c_n, c_bad = self.pending_candidate_n, self.pending_candidate_bad
        s_n, s_bad = self.pending_stable_n, self.pending_stable_bad
        if c_n == 0 or s_n == 0:
            return
        self.pending_candidate_n = self.pending_candidate_bad = 0
        self.pending_stable_n = self.pending_stable_bad = 0
        if c_n <= 2 * SUB_BLOCK:
            self._block(c_n, c_bad, s_n, s_bad)
            return
        parts = min(MAX_SUB_BLOCKS, c_n // SUB_BLOCK)
        seed = (c_n, c_bad, s_n, s_bad, self.candidate_n, self.stable_n)
        rng = np.random.default_rng(list(seed))
        c_sizes = _even(c_n, parts)
        s_sizes = _even(s_n, parts)
        c_bads = rng.multivariate_hypergeometric(c_sizes, c_bad)
        s_bads = rng.multivariate_hypergeometric(s_sizes, s_bad)
        for i in range(parts):
            self._block(int(c_sizes[i]), int(c_bads[i]), int(s_sizes[i]), int(s_bads[i]))

    def _block(self, candidate_n: int, candidate_bad: int, stable_n: int, stable_bad: int) -> None:
        """Take one block in (a sub-block with one arm empty carries no evidence)."""
        if candidate_n > 0 and stable_n > 0:
            self.log_e += block_log_e(
                candidate_n,
                candidate_bad,
                stable_n,
                stable_bad,
                _guess(self.candidate_bad, self.candidate_n),
                _guess(self.stable_bad, self.stable_n),
            )
        self.candidate_n += candidate_n
        self.candidate_bad += candidate_bad
        self.stable_n += stable_n
        self.stable_bad += stable_bad

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> BlockTest:
        return cls(**raw) if raw else cls()


def _even(total: int, parts: int) -> np.ndarray:
    """`total` split into `parts` sizes differing by at most one."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return sizes


def _guess(bad: int, n: int) -> float:
    """The arm's bad rate guessed from what it showed so far (Krichevsky-Trofimov)."""
    return (bad + 0.5) / (n + 1)


def block_log_e(n_c: int, x_c: int, n_s: int, x_s: int, q_c: float, q_s: float) -> float:
    """log E of one block for guesses (q_c, q_s); 0 (no bet) unless q_c > q_s."""
    if q_c <= q_s:
        return 0.0
    q0 = (n_c * q_c + n_s * q_s) / (n_c + n_s)
    return (
        x_c * math.log(q_c / q0)
        + (n_c - x_c) * math.log((1 - q_c) / (1 - q0))
        + x_s * math.log(q_s / q0)
        + (n_s - x_s) * math.log((1 - q_s) / (1 - q0))
    )


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample variance of one arm's values."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, n: int, total: float, total_sq: float) -> Moments:
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        var = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, var)


@dataclass(frozen=True)
class MeanComparison:
    """Candidate minus stable: its estimate, interval, and the evidence it is below zero."""

    estimate: float
    interval: Interval
    # log e-value of "the candidate's mean is below stable's" (one-sided mixture).
    log_e_worse: float
    # ... and of "above" (the reward-hacking alarm's half).
    log_e_better: float = 0.0


def compare_means(
    candidate: Moments,
    stable: Moments,
    alpha: float,
    *,
    n_opt: float = N_OPT,
    min_sd: float = 1e-9,
) -> MeanComparison:
    """The normal mixture on the difference of means, in units of the larger spread."""
    sigma2 = max(candidate.var, stable.var, min_sd * min_sd)
    variance = candidate.var / candidate.n + stable.var / stable.n
    variance = max(variance, sigma2 / (candidate.n + stable.n))
    sigma = math.sqrt(sigma2)
    info = sigma2 / variance  # the effective sample size
    estimate = candidate.mean - stable.mean
    s_worse = -estimate / sigma * info
    rho = best_rho(n_opt, ALPHA_OPT, one_sided=True)
    log_e = normal_log_mixture(s_worse, info, rho, one_sided=True)
    log_better = normal_log_mixture(-s_worse, info, rho, one_sided=True)
    half = normal_mixture_bound(info, alpha, best_rho(n_opt, ALPHA_OPT, one_sided=False))
    width = half * sigma / info
    interval = Interval(estimate - width, estimate + width)
    return MeanComparison(estimate, interval, log_e, log_better)


def mean_cs(arm: Moments, alpha: float, *, n_opt: float = N_OPT, min_sd: float = 1e-9) -> Interval:
    """Where one arm's mean is (the normal mixture, two-sided)."""
    sigma = max(math.sqrt(arm.var), min_sd)
    half = normal_mixture_bound(arm.n, alpha, best_rho(n_opt, ALPHA_OPT, one_sided=False))
    width = half * sigma / arm.n
    return Interval(arm.mean - width, arm.mean + width)
