"""The analysis's statistics against the `confseq` package, and the 2x2 e-process's
validity checked exactly (every outcome of a block enumerated)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from confseq import boundaries
from scipy.stats import binom

from gateway.analysis import sequential as seq


@pytest.mark.parametrize(
    ("successes", "n", "alpha"),
    [(0, 10, 0.05), (3, 10, 0.05), (45, 50, 0.01), (900, 1000, 0.001), (1, 1, 0.1), (17, 30, 0.2)],
)
def test_bernoulli_confidence_sequence_is_confseqs(successes: int, n: int, alpha: float) -> None:
    want = boundaries.bernoulli_confidence_interval(successes, n, alpha, seq.N_OPT, 0.05)
    got = seq.bernoulli_cs(successes, n, alpha)
    assert got.lo == pytest.approx(want[0], abs=1e-7)
    assert got.hi == pytest.approx(want[1], abs=1e-7)


@pytest.mark.parametrize(("s", "v"), [(3.0, 10.0), (-2.0, 5.0), (30.0, 400.0), (0.0, 1.0)])
@pytest.mark.parametrize("one_sided", [True, False])
def test_normal_mixture_is_confseqs(s: float, v: float, one_sided: bool) -> None:
    rho = seq.best_rho(seq.N_OPT, 0.05, one_sided=one_sided)
    want = boundaries.normal_log_mixture(s, v, seq.N_OPT, 0.05, one_sided)
    assert seq.normal_log_mixture(s, v, rho, one_sided=one_sided) == pytest.approx(want)
    if not one_sided:
        bound = boundaries.normal_mixture_bound(v, 0.01, seq.N_OPT, 0.05, False)
        assert seq.normal_mixture_bound(v, 0.01, rho) == pytest.approx(bound)


def _expected_e(n_c: int, n_s: int, p_c: float, p_s: float, q_c: float, q_s: float) -> float:
    """E[E] of one block, summed over every outcome."""
    total = 0.0
    for x_c, x_s in itertools.product(range(n_c + 1), range(n_s + 1)):
        weight = binom.pmf(x_c, n_c, p_c) * binom.pmf(x_s, n_s, p_s)
        total += weight * math.exp(seq.block_log_e(n_c, x_c, n_s, x_s, q_c, q_s))
    return total


@pytest.mark.parametrize(("n_c", "n_s"), [(1, 1), (1, 19), (3, 7), (5, 5)])
def test_a_block_never_pays_on_average_when_the_candidate_is_no_worse(n_c: int, n_s: int) -> None:
    grid = [0.01, 0.1, 0.3, 0.5, 0.8, 0.99]
    for q_c, q_s in itertools.product(grid, grid):
        for p_s in grid:
            for p_c in [p for p in grid if p <= p_s]:
                assert _expected_e(n_c, n_s, p_c, p_s, q_c, q_s) <= 1 + 1e-9, (q_c, q_s, p_c, p_s)


def test_a_block_pays_when_the_candidate_is_worse() -> None:
    assert _expected_e(1, 19, 0.7, 0.1, 0.6, 0.1) > 1.5


def test_the_block_test_resumes_from_its_stored_state() -> None:
    rng = np.random.default_rng(3)
    blocks = [
        (int(c), int(rng.binomial(c, 0.4)), int(s), int(rng.binomial(s, 0.1)))
        for c, s in zip(rng.integers(0, 4, 50), rng.integers(0, 40, 50), strict=True)
    ]
    whole = seq.BlockTest()
    for block in blocks:
        whole.update(*block)
    resumed = seq.BlockTest()
    for block in blocks:
        resumed = seq.BlockTest.from_dict(resumed.to_dict())
        resumed.update(*block)
    assert resumed == whole
    assert whole.log_e > math.log(20)  # 0.4 against 0.1 is found


def test_mean_comparison_finds_a_worse_candidate_and_covers_the_truth() -> None:
    rng = np.random.default_rng(7)
    stable = rng.normal(1.0, 0.5, 2000)
    worse = rng.normal(0.7, 0.35, 200)
    same = rng.normal(1.0, 0.5, 200)

    def moments(x: np.ndarray) -> seq.Moments:
        return seq.Moments.of(len(x), float(x.sum()), float((x * x).sum()))

    bad = seq.compare_means(moments(worse), moments(stable), 0.05)
    assert bad.log_e_worse > math.log(20)
    assert bad.interval.lo < -0.3 < bad.interval.hi
    fine = seq.compare_means(moments(same), moments(stable), 0.05)
    assert fine.log_e_worse < math.log(20)
    assert fine.interval.lo < 0 < fine.interval.hi
    own = seq.mean_cs(moments(same), 0.05)
    assert own.lo < 1.0 < own.hi


def test_looks_that_each_see_one_arm_still_add_up_to_evidence() -> None:
    """A slow route: each look sees one new outcome, of one arm or the other. What one arm
    showed waits for the other's; the evidence is the same as in blocks of both."""
    alternating = seq.BlockTest()
    for _ in range(30):
        alternating.update(1, 1, 0, 0)  # a bad candidate answer
        alternating.update(0, 0, 1, 0)  # a good stable one
    assert alternating.log_e > math.log(100)
    assert alternating.seen == (30, 30, 30, 0)
    paired = seq.BlockTest()
    for _ in range(30):
        paired.update(1, 1, 1, 0)
    assert alternating.log_e == pytest.approx(paired.log_e)
