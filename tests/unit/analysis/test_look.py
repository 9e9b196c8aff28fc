"""One look at a rollout from its totals: baselines, latency, means, bounds, ceilings,
inconclusive steps, and a state that survives JSON (a new leader resumes from it)."""

from __future__ import annotations

import json
import random
from typing import Any

from gateway.analysis.look import Data, Position, look
from gateway.analysis.slo import RouteSlo, parse_slos
from gateway.registry.analysis import LatencySample
from gateway.registry.quality import SATISFACTION, Totals

CANARY = Position("canary", 0, minimums_met=True, step_elapsed_s=10.0)
SHADOW = Position("shadow", -1, minimums_met=True, step_elapsed_s=10.0)


def slo(signals: str, analysis: str = "{}") -> RouteSlo:
    route = parse_slos(f"routes:\n  r:\n    analysis: {analysis}\n    signals:\n{signals}")
    found = route.for_route("r")
    assert found is not None
    return found


def rate(n: int, good: int) -> Totals:
    return Totals(n, float(good), float(good), good, n - good)


def values(xs: list[float]) -> Totals:
    return Totals(len(xs), sum(xs), sum(x * x for x in xs))


def test_canary_compares_with_stable_at_the_same_time_not_with_its_shadow_history() -> None:
    spec = slo("      - {signal: satisfaction_rate, margin: -0.1, min_samples: 20}")
    state: dict[str, Any] = {}
    # In shadow stable was rated badly (history)...
    shadow = Data({("stable", SATISFACTION): rate(1000, 100)}, {})
    _, state = look(spec, SHADOW, shadow, state)
    # ...then both versions are rated well while serving side by side.
    data = Data(
        {
            ("stable", SATISFACTION): rate(1000 + 400, 100 + 390),
            ("canary", SATISFACTION): rate(400, 390),
        },
        {},
    )
    verdict, state = look(spec, CANARY, data, json.loads(json.dumps(state)))
    [signal] = verdict.signals
    assert signal.stable_n == 400 and signal.candidate_n == 400
    assert signal.decision == "pass" and verdict.outcome == "pass"


def test_a_lower_reward_fails_and_an_equal_one_passes() -> None:
    spec = slo("      - {signal: reward_mean, margin: '-10%', critical: true}")
    rng = random.Random(5)
    stable = [rng.gauss(1.0, 0.5) for _ in range(3000)]
    worse = [rng.gauss(0.8, 0.4) for _ in range(300)]
    same = [rng.gauss(1.0, 0.5) for _ in range(300)]
    bad, _ = look(
        spec,
        CANARY,
        Data({("stable", "reward"): values(stable), ("canary", "reward"): values(worse)}, {}),
        {},
    )
    assert bad.outcome == "fail" and bad.signals[0].decision == "fail"
    good, _ = look(
        spec,
        CANARY,
        Data({("stable", "reward"): values(stable), ("canary", "reward"): values(same)}, {}),
        {},
    )
    assert good.signals[0].decision == "pass", good.signals[0]
    assert good.signals[0].margin is not None and -0.11 < good.signals[0].margin < -0.09


def test_a_slower_candidate_fails_latency_and_a_new_leader_resumes_from_the_state() -> None:
    spec = slo("      - {signal: latency_p95, margin: '+20%', critical: true, min_samples: 30}")
    rng = random.Random(9)
    state: dict[str, Any] = {}
    verdict = None
    for _look in range(40):
        batch = [LatencySample("stable", rng.lognormvariate(5, 0.3), None) for _ in range(40)]
        batch += [LatencySample("canary", 2 * rng.lognormvariate(5, 0.3), None) for _ in range(5)]
        verdict, state = look(spec, CANARY, Data({}, {}, batch), state)
        state = json.loads(json.dumps(state))  # stored and read back by the next leader
        if verdict.outcome == "fail":
            break
    assert verdict is not None and verdict.outcome == "fail", verdict
    [signal] = verdict.signals
    assert signal.candidate_value is not None and signal.stable_value is not None
    assert signal.candidate_value > 1.5 * signal.stable_value


def test_an_equally_fast_candidate_passes_latency() -> None:
    spec = slo("      - {signal: latency_p95, margin: '+20%', min_samples: 30}")
    rng = random.Random(11)
    state: dict[str, Any] = {}
    for _ in range(40):
        batch = [LatencySample("stable", rng.lognormvariate(5, 0.3), None) for _ in range(40)]
        batch += [LatencySample("canary", rng.lognormvariate(5, 0.3), None) for _ in range(20)]
        verdict, state = look(spec, CANARY, Data({}, {}, batch), state)
    assert verdict.outcome == "pass", verdict.signals[0]


def test_an_absolute_bound_fails_a_candidate_as_good_as_stable() -> None:
    spec = slo("      - {signal: verifier_pass, scorer: v, margin: -0.1, min: 0.9, critical: true}")
    data = Data({("stable", "v"): rate(2000, 1400), ("canary", "v"): rate(300, 210)}, {})
    verdict, _ = look(spec, CANARY, data, {})
    assert verdict.outcome == "fail" and "minimum" in verdict.signals[0].reason


def test_a_non_critical_failure_alone_holds_the_step_until_it_is_inconclusive() -> None:
    spec = slo(
        "      - {signal: verifier_pass, scorer: v, margin: -0.05, min_samples: 20}\n"
        "      - {signal: error_rate, margin: 0.05, min_samples: 20}",
        "{max_step_duration_s: 60}",
    )
    data = Data(
        {("stable", "v"): rate(2000, 1800), ("canary", "v"): rate(300, 150)},
        {"stable": rate(2000, 2000), "canary": rate(300, 300)},
    )
    verdict, _ = look(spec, CANARY, data, {})
    assert [s.decision for s in verdict.signals] == ["fail", "pass"]
    assert verdict.outcome == "wait"
    late = Position("canary", 0, minimums_met=True, step_elapsed_s=61.0)
    verdict, _ = look(spec, late, data, {})
    assert verdict.outcome == "inconclusive" and "verifier_pass:v" in verdict.reason


def test_shadow_judges_quality_on_pairs_and_leaves_errors_to_the_canary() -> None:
    spec = slo(
        "      - {signal: verifier_pass, scorer: v, margin: -0.1, critical: true, min_samples: 10}\n"
        "      - {signal: error_rate, margin: 0.05, critical: true}\n"
        "      - {signal: judge_win_rate, margin: -0.1, min_samples: 10}"
    )
    worse = [-1.0] * 12 + [0.0] * 8  # the candidate fails where stable passed, 12 of 20
    data = Data({("paired", "v"): values(worse), ("paired", "judge"): values([0.5] * 20)}, {})
    verdict, _ = look(spec, SHADOW, data, {})
    decisions = {s.name: s.decision for s in verdict.signals}
    assert decisions == {
        "verifier_pass:v": "fail",
        "error_rate": "n/a",
        "judge_win_rate:judge": "pass",
    }
    assert verdict.outcome == "fail"
    canary, _ = look(spec, CANARY, Data({}, {}), {})
    assert {s.name: s.decision for s in canary.signals}["judge_win_rate:judge"] == "n/a"
