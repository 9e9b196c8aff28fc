"""The rollout analysis's verdicts over the admin API.

- `GET /admin/rollouts/{ref}/analysis`: the newest verdict of a rollout (`ref`: its id, or
  a route for the route's active or latest rollout), shaped for a Kubernetes rollout
  controller's web metric provider: `phase` is `Successful`, `Failed`, `Inconclusive` or
  `Running`, beside the outcome, the action and each signal's evidence.
- `GET /admin/rollouts/{ref}/verdicts`: the verdict history, newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from gateway.analysis.runner import AnalysisRunner, Phase, phase_of
from gateway.api.deps import RolloutsDep
from gateway.rollout.refs import find_rollout

router = APIRouter(prefix="/admin", tags=["admin"])


class VerdictOut(BaseModel):
    """One verdict with its evidence per signal."""

    id: int
    at: datetime
    stage: str
    step: int
    outcome: str
    action: str
    acted: bool
    dry_run: bool
    reason: str
    leader: str
    signals: list[dict[str, Any]]


class AnalysisOut(BaseModel):
    """A rollout's analysis now: where it is and its newest verdict (None before one)."""

    rollout: int
    route: str
    stage: str
    step: int
    paused: bool
    phase: Phase
    leader: bool
    verdict: VerdictOut | None


class VerdictList(BaseModel):
    rollout: int
    route: str
    data: list[VerdictOut]


def _runner(request: Request) -> AnalysisRunner:
    runner: AnalysisRunner = request.app.state.analysis
    return runner


@router.get("/rollouts/{ref}/analysis")
async def analysis(ref: str, rollouts: RolloutsDep, request: Request) -> AnalysisOut:
    """The newest verdict of a rollout (by id, or a route's active or latest rollout)."""
    row = await find_rollout(rollouts, ref)
    runner = _runner(request)
    latest = await runner.latest_verdict(row.id)
    verdict = VerdictOut.model_validate(latest, from_attributes=True) if latest else None
    return AnalysisOut(
        rollout=row.id,
        route=row.route,
        stage=row.stage.value,
        step=row.step,
        paused=row.paused,
        phase=phase_of(row.stage.value, latest.outcome if latest else None),
        leader=runner.leading,
        verdict=verdict,
    )


@router.get("/rollouts/{ref}/verdicts")
async def verdicts(
    ref: str,
    rollouts: RolloutsDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> VerdictList:
    """A rollout's verdicts, newest first."""
    row = await find_rollout(rollouts, ref)
    rows = await _runner(request).verdicts(row.id, limit)
    return VerdictList(
        rollout=row.id,
        route=row.route,
        data=[VerdictOut.model_validate(v, from_attributes=True) for v in rows],
    )
