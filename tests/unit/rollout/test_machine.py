"""The rollout state machine, on rollouts built in memory: which command moves where, and why not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.errors import Conflict
from gateway.registry.rollouts import SHADOW_STEP, Change, Samples
from gateway.registry.schema import RolloutRow, RolloutStage
from gateway.rollout.machine import Command, decide, gate
from gateway.rollout.plan import RolloutPlan

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PLAN = RolloutPlan()  # 1, 5, 25, 50, 100; no minimums
LAST = len(PLAN.canary) - 1
GATED = RolloutPlan.model_validate(
    {
        "shadow": {"min_samples": 20, "min_duration_s": 60},
        "canary": [{"weight": 10, "min_samples": 50}, {"weight": 100, "min_samples": 50}],
    }
)
ENDED = [RolloutStage.PROMOTED, RolloutStage.ROLLED_BACK, RolloutStage.ABORTED]


def rollout(
    stage: RolloutStage = RolloutStage.SHADOW,
    step: int = SHADOW_STEP,
    *,
    plan: RolloutPlan = PLAN,
    paused: bool = False,
    in_step_s: float = 3_600,
) -> RolloutRow:
    weight = plan.canary[step].weight if stage == RolloutStage.CANARY else 0.0
    return RolloutRow(
        id=3,
        route="pirate",
        active_route="pirate" if stage in (RolloutStage.SHADOW, RolloutStage.CANARY) else None,
        stable_version=1,
        candidate_version=2,
        stage=stage,
        paused=paused,
        step=step,
        weight=weight,
        plan=plan.model_dump(),
        pinned_candidate=True,
        created_by="t",
        reason="",
        step_started_at=NOW - timedelta(seconds=in_step_s),
    )


def canary(step: int, **kw: Any) -> RolloutRow:
    return rollout(RolloutStage.CANARY, step, **kw)


def run(
    row: RolloutRow,
    command: Command,
    *,
    plan: RolloutPlan = PLAN,
    samples: Samples | None = None,
    force: bool = False,
) -> Change:
    return decide(row, command, plan, samples or {}, NOW, force=force)


def refused(row: RolloutRow, command: Command, code: str, **kw: Any) -> Conflict:
    with pytest.raises(Conflict) as caught:
        run(row, command, **kw)
    assert (caught.value.status_code, caught.value.code) == (409, code)
    assert "rollout 3 of pirate" in caught.value.message
    return caught.value


# -- advance and promote --------------------------------------------------------------------


def test_advance_from_shadow_starts_the_first_canary_step() -> None:
    change = run(rollout(), Command.ADVANCE)

    assert change == Change(RolloutStage.CANARY, 0, 1.0, False, new_step=True)
    assert not change.ended


@pytest.mark.parametrize("step", range(LAST))
def test_advance_moves_to_the_next_canary_step_and_its_weight(step: int) -> None:
    change = run(canary(step), Command.ADVANCE)

    assert (change.stage, change.step, change.weight) == (
        RolloutStage.CANARY,
        step + 1,
        PLAN.canary[step + 1].weight,
    )
    assert change.new_step and not change.paused and change.detail == {}


def test_advance_walks_shadow_through_every_step_to_100_percent() -> None:
    row, weights = rollout(), []
    for _ in PLAN.canary:
        change = run(row, Command.ADVANCE)
        weights.append(change.weight)
        row = canary(change.step)

    assert weights == [1.0, 5.0, 25.0, 50.0, 100.0]
    refused(row, Command.ADVANCE, "last_step")


def test_advance_at_the_last_step_is_refused_even_forced() -> None:
    error = refused(canary(LAST), Command.ADVANCE, "last_step", force=True)

    assert "promote" in error.message


def test_promote_at_the_last_step_makes_the_candidate_take_everything() -> None:
    change = run(canary(LAST), Command.PROMOTE)

    assert (change.stage, change.weight, change.detail) == (RolloutStage.PROMOTED, 100.0, {})
    assert change.ended


@pytest.mark.parametrize("force", [False, True])
def test_promote_from_shadow_is_refused(force: bool) -> None:
    error = refused(rollout(), Command.PROMOTE, "canary_not_passed", force=force)

    assert "shadow" in error.message


@pytest.mark.parametrize("step", range(LAST))
def test_promote_before_the_last_step_needs_force(step: int) -> None:
    refused(canary(step), Command.PROMOTE, "canary_not_passed")

    change = run(canary(step), Command.PROMOTE, force=True)

    assert (change.stage, change.weight) == (RolloutStage.PROMOTED, 100.0)
    assert change.detail == {"skipped_steps": LAST - step}


# -- minimums ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "samples", "says"),
    [
        (rollout(plan=GATED), {(SHADOW_STEP, "shadow"): 19}, "19 of 20 shadow answers"),
        (rollout(plan=GATED, in_step_s=10), {(SHADOW_STEP, "shadow"): 20}, "10 of 60 seconds"),
        (canary(0, plan=GATED), {(0, "canary"): 49, (0, "stable"): 900}, "49 of 50 canary"),
        (canary(0, plan=GATED), {(SHADOW_STEP, "shadow"): 99}, "0 of 50 canary requests"),
    ],
    ids=["shadow_samples", "shadow_duration", "canary_samples", "other_steps_do_not_count"],
)
def test_advance_before_the_minimums_is_refused_unless_forced(
    row: RolloutRow, samples: Samples, says: str
) -> None:
    error = refused(row, Command.ADVANCE, "minimums_not_met", plan=GATED, samples=samples)

    forced = run(row, Command.ADVANCE, plan=GATED, samples=samples, force=True)

    assert says in error.message and "force" in error.message
    assert forced.stage == RolloutStage.CANARY and forced.new_step
    assert forced.detail["forced_past"] == gate(row, GATED, samples, NOW)
    assert any(says in item for item in forced.detail["forced_past"])


def test_minimums_met_let_the_rollout_advance_and_promote_without_force() -> None:
    shadow = run(rollout(plan=GATED), Command.ADVANCE, plan=GATED, samples={(-1, "shadow"): 20})
    last = canary(1, plan=GATED)
    promoted = run(last, Command.PROMOTE, plan=GATED, samples={(1, "canary"): 50})

    assert (shadow.stage, shadow.step, shadow.weight, shadow.detail) == ("canary", 0, 10.0, {})
    assert (promoted.stage, promoted.detail) == (RolloutStage.PROMOTED, {})


def test_promote_at_the_last_step_checks_its_minimums() -> None:
    last = canary(1, plan=GATED)

    refused(last, Command.PROMOTE, "minimums_not_met", plan=GATED)
    forced = run(last, Command.PROMOTE, plan=GATED, force=True)

    assert forced.detail == {"forced_past": ["0 of 50 canary requests"]}


@pytest.mark.parametrize(
    ("row", "command", "code"),
    [
        (rollout(plan=GATED), Command.PROMOTE, "canary_not_passed"),
        (canary(1, plan=GATED), Command.ADVANCE, "last_step"),
    ],
    ids=["promote_from_shadow", "advance_at_last_step"],
)
def test_a_move_that_force_cannot_allow_is_not_blamed_on_minimums(
    row: RolloutRow, command: Command, code: str
) -> None:
    # "minimums not met (force to override)" would send the operator to force a move
    # that is refused anyway.
    refused(row, command, code, plan=GATED)


# -- pause and resume -------------------------------------------------------------------------


@pytest.mark.parametrize("row", [rollout(), canary(2)], ids=["shadow", "canary"])
def test_pause_holds_the_rollout_where_it_is_and_resume_releases_it(row: RolloutRow) -> None:
    paused = run(row, Command.PAUSE)
    row.paused = True
    resumed = run(row, Command.RESUME)

    assert (paused.stage, paused.step, paused.weight, paused.paused) == (
        row.stage,
        row.step,
        row.weight,
        True,
    )
    assert not paused.new_step and not paused.ended
    assert (resumed.stage, resumed.step, resumed.weight, resumed.paused) == (
        row.stage,
        row.step,
        row.weight,
        False,
    )


def test_pausing_twice_and_resuming_a_running_rollout_are_refused() -> None:
    refused(canary(1, paused=True), Command.PAUSE, "rollout_paused")
    refused(canary(1), Command.RESUME, "not_paused")


@pytest.mark.parametrize("command", [Command.ADVANCE, Command.PROMOTE])
@pytest.mark.parametrize("row", [rollout(paused=True), canary(LAST, paused=True)])
def test_a_paused_rollout_refuses_advance_and_promote(row: RolloutRow, command: Command) -> None:
    error = refused(row, command, "rollout_paused", force=True)

    assert "resume" in error.message


@pytest.mark.parametrize(
    ("command", "stage"),
    [(Command.ROLLBACK, RolloutStage.ROLLED_BACK), (Command.ABORT, RolloutStage.ABORTED)],
)
@pytest.mark.parametrize(
    "row",
    [rollout(), canary(0), canary(LAST), canary(2, paused=True)],
    ids=["shadow", "first_step", "last_step", "paused"],
)
def test_rollback_and_abort_end_the_rollout_at_zero_weight(
    row: RolloutRow, command: Command, stage: RolloutStage
) -> None:
    change = run(row, command)

    assert (change.stage, change.weight, change.paused) == (stage, 0.0, False)
    assert change.step == row.step and change.ended


# -- ended rollouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(Command))
@pytest.mark.parametrize("stage", ENDED)
def test_an_ended_rollout_refuses_every_command(stage: RolloutStage, command: Command) -> None:
    row = rollout(stage, LAST)

    error = refused(row, command, "rollout_ended", force=True)

    assert stage.value in error.message
