"""Synthetic canaries, checked after every request: identical versions are rarely rolled
back, broken ones quickly (the scenarios of docs/analysis.md; the full report with more
runs is `python -m loadtest.analysis_sim`)."""

from __future__ import annotations

import numpy as np

from gateway.analysis import sequential as seq
from gateway.analysis import simulation as sim


def test_the_vectorised_formulas_are_the_scalar_ones() -> None:
    rng = np.random.default_rng(1)
    n_c = rng.integers(0, 5, 200).astype(float)
    n_s = rng.integers(0, 40, 200).astype(float)
    x_c = rng.binomial(n_c.astype(int), 0.3).astype(float)
    x_s = rng.binomial(n_s.astype(int), 0.2).astype(float)
    q_c, q_s = rng.random(200) * 0.98 + 0.01, rng.random(200) * 0.98 + 0.01
    vec = sim.block_log_e_vec(n_c, x_c, n_s, x_s, q_c, q_s)
    for i in range(200):
        want = 0.0
        if n_c[i] > 0 and n_s[i] > 0:
            want = seq.block_log_e(
                int(n_c[i]), int(x_c[i]), int(n_s[i]), int(x_s[i]), q_c[i], q_s[i]
            )
        assert vec[i] == np.float64(want) or abs(vec[i] - want) < 1e-9

    n = np.array([[40.0, 7.0], [900.0, 60.0]])
    values = [rng.normal(1, 0.5, int(k)) for k in n.ravel()]
    total = np.array([[values[0].sum(), values[1].sum()], [values[2].sum(), values[3].sum()]])
    total_sq = np.array(
        [
            [(values[0] ** 2).sum(), (values[1] ** 2).sum()],
            [(values[2] ** 2).sum(), (values[3] ** 2).sum()],
        ]
    )
    got = sim._mean_log_e(
        n, total, total_sq, seq.best_rho(seq.N_OPT, seq.ALPHA_OPT, one_sided=True)
    )
    for run in range(2):
        c = seq.Moments.of(int(n[0, run]), float(total[0, run]), float(total_sq[0, run]))
        s = seq.Moments.of(int(n[1, run]), float(total[1, run]), float(total_sq[1, run]))
        assert abs(got[run] - seq.compare_means(c, s, 0.05).log_e_worse) < 1e-9


def test_identical_versions_are_rarely_rolled_back() -> None:
    alpha = 0.05 / 5
    fired = np.zeros(500, dtype=bool)
    for seed, (bad) in enumerate((0.02, 0.1, 0.3)):
        fired |= sim.pass_fail(bad, bad, alpha=alpha, runs=500, horizon=1000, seed=seed).fired
    for seed, arm in enumerate(((1.0, 0.5), (7.0, 1.5)), start=10):
        fired |= sim.means(arm, arm, alpha=alpha, runs=500, horizon=1000, seed=seed).fired
    assert fired.mean() <= 0.05


def test_a_broken_candidate_goes_within_fifty_requests() -> None:
    outcome = sim.pass_fail(0.1, 0.7, alpha=0.01, runs=500, horizon=200, seed=21)
    assert outcome.rate == 1.0
    assert outcome.quantile(0.9) <= 50


def test_a_lower_reward_is_found_within_two_hundred_requests() -> None:
    outcome = sim.means((1.0, 0.5), (0.85, 0.425), alpha=0.01, runs=500, horizon=600, seed=31)
    assert outcome.rate >= 0.95
    assert outcome.quantile(0.9) <= 200


def test_a_five_point_drop_in_success_rate_is_found() -> None:
    outcome = sim.pass_fail(0.1, 0.15, alpha=0.05, runs=500, horizon=3000, seed=41)
    assert outcome.rate >= 0.95
    assert outcome.quantile(0.5) <= 500
