"""Synthetic canaries: how often the analysis's tests fire, and after how many requests.

Each run streams requests to a rollout with a `weight` share on the candidate and checks
the signal's test after every request, as the analysis would if it looked that often
(it looks once a second: fewer looks, never more errors). The runs are vectorised over
numpy arrays: the same formulas as `gateway.analysis.sequential`, checked against them
by the unit tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from gateway.analysis.sequential import ALPHA_OPT, N_OPT, best_rho


@dataclass(frozen=True)
class Outcome:
    """Which runs fired, and the candidate requests each had served by then."""

    fired: np.ndarray  # bool per run
    canary_served: np.ndarray  # candidate requests when it fired (horizon when it did not)

    @property
    def rate(self) -> float:
        """The share of runs whose test fired."""
        return float(self.fired.mean())

    def quantile(self, q: float) -> float:
        """The q-quantile of candidate requests served before the verdict (inf: undecided)."""
        served = np.where(self.fired, self.canary_served, np.inf)
        return float(np.quantile(served, q))


def block_log_e_vec(
    n_c: np.ndarray, x_c: np.ndarray, n_s: np.ndarray, x_s: np.ndarray,
    q_c: np.ndarray, q_s: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """`sequential.block_log_e` over arrays (0 where q_c <= q_s or an arm is empty)."""
    bet = (q_c > q_s) & (n_c > 0) & (n_s > 0)
    q_c = np.where(bet, q_c, 0.5)
    q_s = np.where(bet, q_s, 0.5)
    q0 = (n_c * q_c + n_s * q_s) / np.maximum(n_c + n_s, 1)
    value = (
        x_c * np.log(q_c / q0)
        + (n_c - x_c) * np.log((1 - q_c) / (1 - q0))
        + x_s * np.log(q_s / q0)
        + (n_s - x_s) * np.log((1 - q_s) / (1 - q0))
    )
    return np.where(bet, value, 0.0)


def pass_fail(
    bad_stable: float,
    bad_candidate: float,
    *,
    alpha: float,
    weight: float = 0.05,
    runs: int = 500,
    horizon: int = 2000,
    min_samples: int = 30,
    seed: int = 0,
) -> Outcome:
    """Runs of the exact 2x2 e-process: candidate bad at `bad_candidate`, stable at
    `bad_stable`; it fires when the candidate is worse (log E >= log 1/alpha)."""
    rng = np.random.default_rng(seed)
    threshold = math.log(1 / alpha)
    log_e = np.zeros(runs)
    n_c = np.zeros(runs)
    x_c = np.zeros(runs)
    n_s = np.zeros(runs)
    x_s = np.zeros(runs)
    fired = np.zeros(runs, dtype=bool)
    served = np.full(runs, horizon, dtype=float)
    # Seen, not in a block yet (a block needs both arms: `BlockTest`).
    p_c, p_xc, p_s, p_xs = (np.zeros(runs) for _ in range(4))
    for t in range(1, horizon + 1):
        # The stable requests since the last candidate one, then the candidate's.
        k = rng.geometric(weight, runs) - 1
        p_s += k
        p_xs += rng.binomial(k, bad_stable)
        p_c += 1
        p_xc += (rng.random(runs) < bad_candidate).astype(float)
        close = p_s > 0
        q_c = (x_c + 0.5) / (n_c + 1)
        q_s = (x_s + 0.5) / (n_s + 1)
        log_e += np.where(close, block_log_e_vec(p_c, p_xc, p_s, p_xs, q_c, q_s), 0.0)
        for total, pending in ((n_c, p_c), (x_c, p_xc), (n_s, p_s), (x_s, p_xs)):
            total += np.where(close, pending, 0.0)
            pending[close] = 0.0
        seen_c, seen_s = n_c + p_c, n_s + p_s
        now = ~fired & (log_e >= threshold) & (seen_c >= min_samples) & (seen_s >= min_samples)
        served[now] = t
        fired |= now
    return Outcome(fired, served)


def means(
    stable: tuple[float, float],
    candidate: tuple[float, float],
    *,
    alpha: float,
    weight: float = 0.05,
    runs: int = 500,
    horizon: int = 1000,
    min_samples: int = 30,
    seed: int = 0,
    higher: bool = False,
) -> Outcome:
    """Runs of the normal mixture on the difference of means (normal values, (mean, sd)
    per arm); it fires when the candidate's mean is lower (`higher`: when it is higher),
    checked after every request."""
    rng = np.random.default_rng(seed)
    threshold = math.log(1 / alpha)
    rho = best_rho(N_OPT, ALPHA_OPT, one_sided=True)
    n = np.zeros((2, runs))
    total = np.zeros((2, runs))
    total_sq = np.zeros((2, runs))
    fired = np.zeros(runs, dtype=bool)
    served = np.full(runs, horizon, dtype=float)
    params = np.array([candidate, stable])
    while True:
        arm = (rng.random(runs) >= weight).astype(int)  # 0: candidate, 1: stable
        value = rng.normal(params[arm, 0], params[arm, 1])
        cols = np.arange(runs)
        n[arm, cols] += 1
        total[arm, cols] += value
        total_sq[arm, cols] += value * value
        if n[0].max() > horizon:
            break
        ready = (n[0] >= min_samples) & (n[1] >= min_samples) & ~fired
        if not ready.any():
            continue
        sign = -1.0 if higher else 1.0
        log_e = _mean_log_e(n, sign * total, total_sq, rho)
        now = ready & (log_e >= threshold)
        served[now] = n[0][now]
        fired |= now
    return Outcome(fired, served)


def _mean_log_e(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, rho: float) -> np.ndarray:
    """`sequential.compare_means(...).log_e_worse` over arrays."""
    safe = np.maximum(n, 2)
    mean = total / np.maximum(n, 1)
    var = np.maximum(0.0, (total_sq - n * mean * mean) / (safe - 1))
    sigma2 = np.maximum(np.maximum(var[0], var[1]), 1e-18)
    variance = var[0] / np.maximum(n[0], 1) + var[1] / np.maximum(n[1], 1)
    variance = np.maximum(variance, sigma2 / np.maximum(n[0] + n[1], 1))
    info = sigma2 / variance
    s = -(mean[0] - mean[1]) / np.sqrt(sigma2) * info
    log_e: np.ndarray = (
        0.5 * np.log(4 * rho / (info + rho))
        + s * s / (2 * (info + rho))
        + log_ndtr(s / np.sqrt(info + rho))
    )
    return log_e
