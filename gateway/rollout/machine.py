"""The rollout state machine: which command may move a rollout where, and on what evidence.

```
start ─> shadow ──advance──> canary step 0 ──advance──> … step n-1 ──promote──> promoted
            │                     │                                  │
            └──────── rollback (rolled_back) or abort (aborted), from any active stage
```

Pause holds a rollout where it is: the canary keeps its share (its users stay put), shadow
copies stop, and `advance` and `promote` are refused until `resume`. Each step's minimums
(samples, duration) gate `advance` and `promote` unless the operator forces past them.
The functions here are pure: they check a rollout and say what changes; the registry applies
the change and its audit event in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.errors import Conflict
from gateway.registry.rollouts import ACTIVE, SHADOW_STEP, Change
from gateway.registry.schema import RolloutRow, RolloutStage
from gateway.rollout.plan import RolloutPlan


class Command(StrEnum):
    """What an operator (or the controller) can ask of an active rollout."""

    PAUSE = "pause"
    RESUME = "resume"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"


def gate(
    row: RolloutRow, plan: RolloutPlan, samples: Mapping[tuple[int, str], int], now: datetime
) -> list[str]:
    """What the current step still lacks before it may be left (empty: nothing)."""
    if row.stage == RolloutStage.SHADOW:
        have = samples.get((SHADOW_STEP, "shadow"), 0)
        need, need_s = plan.shadow.min_samples, plan.shadow.min_duration_s
        what = "shadow answers"
    else:
        step = plan.canary[row.step]
        have = samples.get((row.step, "canary"), 0)
        need, need_s = step.min_samples, step.min_duration_s
        what = "canary requests"
    missing = []
    if have < need:
        missing.append(f"{have} of {need} {what}")
    elapsed = (now - row.step_started_at).total_seconds()
    if elapsed < need_s:
        missing.append(f"{elapsed:.0f} of {need_s:.0f} seconds in the step")
    return missing


def decide(
    row: RolloutRow,
    command: Command,
    plan: RolloutPlan,
    samples: Mapping[tuple[int, str], int],
    now: datetime,
    *,
    force: bool = False,
) -> Change:
    """The change `command` makes to `row`, or Conflict (409) saying why it may not."""
    ref = f"rollout {row.id} of {row.route}"
    if row.stage not in ACTIVE:
        raise Conflict(f"{ref} has ended ({row.stage.value})", code="rollout_ended")
    if command in (Command.PAUSE, Command.RESUME):
        pausing = command == Command.PAUSE
        if row.paused == pausing:
            state = "paused already" if pausing else "not paused"
            raise Conflict(f"{ref} is {state}", code="rollout_paused" if pausing else "not_paused")
        return Change(row.stage, row.step, row.weight, paused=pausing)
    if command in (Command.ROLLBACK, Command.ABORT):
        stage = RolloutStage.ROLLED_BACK if command == Command.ROLLBACK else RolloutStage.ABORTED
        return Change(stage=stage, step=row.step, weight=0.0, paused=False)
    if row.paused:
        raise Conflict(f"{ref} is paused; resume it first", code="rollout_paused")
    last = len(plan.canary) - 1
    if command == Command.ADVANCE and row.stage == RolloutStage.CANARY and row.step >= last:
        raise Conflict(f"{ref} is at its last canary step; promote it", code="last_step")
    if command == Command.PROMOTE and row.stage == RolloutStage.SHADOW:
        raise Conflict(
            f"{ref} is in shadow; a candidate is promoted only after its canary steps",
            code="canary_not_passed",
        )
    missing = gate(row, plan, samples, now)
    if missing and not force:
        raise Conflict(
            f"{ref} has not met its {row.stage.value} step's minimums: "
            + ", ".join(missing)
            + " (force to override)",
            code="minimums_not_met",
        )
    detail: dict[str, Any] = {"forced_past": missing} if missing else {}
    if command == Command.ADVANCE:
        step = 0 if row.stage == RolloutStage.SHADOW else row.step + 1
        weight = plan.canary[step].weight
        return Change(RolloutStage.CANARY, step, weight, False, new_step=True, detail=detail)
    # PROMOTE, from a canary step
    if row.step < last and not force:
        raise Conflict(
            f"{ref} is at canary step {row.step + 1} of {last + 1}; advance through the steps "
            "or force the promotion",
            code="canary_not_passed",
        )
    if row.step < last:
        detail["skipped_steps"] = last - row.step
    return Change(RolloutStage.PROMOTED, row.step, 100.0, False, detail=detail)
