"""Rollout plans: the default, and every malformed plan refused with one clear 400."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.rollout.plan import DEFAULT_STEPS, CanaryStep, RolloutPlan, parse_plan


def steps(*weights: float) -> dict[str, Any]:
    return {"canary": [{"weight": w} for w in weights]}


def refused(raw: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_plan(raw)
    error = caught.value
    assert (error.status_code, error.code) == (400, "invalid_plan")
    assert error.message.startswith("invalid rollout plan: ")
    return error


def test_no_plan_is_the_default_plan() -> None:
    plan = parse_plan(None)

    assert plan == RolloutPlan() == parse_plan({})
    assert [s.weight for s in plan.canary] == list(DEFAULT_STEPS) == [1, 5, 25, 50, 100]
    assert (plan.shadow.sample_rate, plan.shadow.min_samples) == (1.0, 0)
    assert [s.buckets for s in plan.canary] == [100, 500, 2_500, 5_000, 10_000]


def test_a_valid_plan_keeps_its_numbers() -> None:
    raw = {
        "shadow": {"sample_rate": 0.25, "min_samples": 20, "min_duration_s": 60},
        "canary": [{"weight": 0.5, "min_samples": 10}, {"weight": 33.3}, {"weight": 100}],
    }

    plan = parse_plan(raw)

    assert plan.shadow.sample_rate == 0.25 and plan.shadow.min_samples == 20
    assert [(s.weight, s.min_samples) for s in plan.canary] == [(0.5, 10), (33.3, 0), (100, 0)]
    assert [s.buckets for s in plan.canary] == [50, 3_330, 10_000]
    assert RolloutPlan.model_validate(plan.model_dump()) == plan  # survives the registry


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        (steps(0), "plan.canary.0.weight", "greater than 0"),
        (steps(-5), "plan.canary.0.weight", "greater than 0"),
        (steps(1, 100.5), "plan.canary.1.weight", "less than or equal to 100"),
        (steps(5, 1), "plan", "rise strictly; 1.0 follows 5.0"),
        (steps(1, 5, 5), "plan", "rise strictly; 5.0 follows 5.0"),
        (steps(1.001, 1.002), "plan", "differ by at least 0.01"),
        (steps(0.001), "plan", "at least 0.01"),
        (steps(*range(1, 52)), "plan.canary", "at most 50 items"),
        ({"canary": []}, "plan.canary", "at least 1 item"),
        (
            {"canary": [{"weight": 5, "min_samples": -1}]},
            "plan.canary.0.min_samples",
            "greater than or equal to 0",
        ),
        ({"shadow": {"min_samples": -3}}, "plan.shadow.min_samples", "min_samples"),
        ({"shadow": {"sample_rate": 1.5}}, "plan.shadow.sample_rate", "less than or equal to 1"),
        ({"shadow": {"sample_rate": -0.1}}, "plan.shadow.sample_rate", "greater than or equal"),
        ({"colour": "red"}, "plan.colour", "colour: Extra inputs are not permitted"),
        ({"shadow": {"rate": 1}}, "plan.shadow.rate", "shadow.rate: Extra inputs"),
        ({"canary": [{"weight": 5, "w": 1}]}, "plan.canary.0.w", "canary.0.w: Extra inputs"),
        ({"canary": [{}]}, "plan.canary.0.weight", "canary.0.weight: Field required"),
        ({"canary": "fast"}, "plan.canary", "canary:"),
        ("everything", "plan", "valid dictionary"),
    ],
    ids=[
        "zero_weight",
        "negative_weight",
        "weight_above_100",
        "falling_weights",
        "equal_weights",
        "weights_within_one_bucket",
        "weight_below_one_bucket",
        "more_than_50_steps",
        "no_steps",
        "negative_step_min_samples",
        "negative_shadow_min_samples",
        "sample_rate_above_1",
        "negative_sample_rate",
        "unknown_top_level_field",
        "unknown_shadow_field",
        "unknown_step_field",
        "step_without_weight",
        "canary_not_a_list",
        "plan_not_an_object",
    ],
)
def test_malformed_plan_is_an_invalid_plan_naming_the_problem(
    raw: Any, param: str, says: str
) -> None:
    error = refused(raw)

    assert error.param == param
    assert says in error.message


def test_every_problem_of_a_plan_is_named_in_one_error() -> None:
    raw = {"shadow": {"sample_rate": 3}, "canary": [{"weight": 5, "min_samples": -1}], "x": 1}

    error = refused(raw)

    for where in ("shadow.sample_rate", "canary.0.min_samples", "x: Extra inputs"):
        assert where in error.message
    assert error.param == "plan.shadow.sample_rate"


def test_a_bad_step_is_not_also_reported_as_a_missing_step() -> None:
    # One step, with a bad weight: the plan has a step, it is the step that is wrong.
    error = refused(steps(0))

    assert "canary.0.weight: Input should be greater than 0" in error.message
    assert "at least 1 item" not in error.message, error.message


def test_a_step_outside_a_plan_checks_its_weight_too() -> None:
    assert CanaryStep(weight=100).buckets == 10_000
    with pytest.raises(ValueError, match="greater than 0"):
        CanaryStep(weight=0)
