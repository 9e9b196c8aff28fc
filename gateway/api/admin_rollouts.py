"""The rollout admin API: start, steer and inspect rollouts of adapter versions.

- `POST /admin/rollouts`: start (`route`, `version`, `plan`); the candidate is loaded, pinned
  and warmed up on every replica before the rollout exists.
- `GET /admin/rollouts`: recent rollouts; `GET /admin/rollouts/{route}`: the route's active
  rollout (else its latest) with samples per step and variant, time in step, what the step
  still lacks, the latest decisions and the quality signals per variant.
- `POST /admin/rollouts/{route}/{pause|resume|advance|promote|rollback|abort}`.
- `POST /admin/rollouts/{route}/assignments`: which variant each subject gets now.
- `GET /admin/rollouts/{route}/shadow-pairs`: (primary, shadow) answers for comparison.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.api.deps import ActorDep, RolloutsDep
from gateway.api.rollout_models import (
    AssignBody,
    AssignOut,
    CommandBody,
    RolloutList,
    RolloutOut,
    ShadowPairList,
    ShadowPairOut,
    SignalOut,
    StartBody,
)
from gateway.quality.signals import summaries
from gateway.rollout.machine import Command

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/rollouts", status_code=201)
async def start(body: StartBody, rollouts: RolloutsDep, actor: ActorDep) -> RolloutOut:
    """Start a rollout in shadow once the candidate is warm everywhere."""
    status = await rollouts.begin(
        body.route, body.version, body.plan, actor=actor, reason=body.reason
    )
    return RolloutOut.of(status)


@router.get("/rollouts")
async def list_rollouts(
    rollouts: RolloutsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> RolloutList:
    """The newest rollouts, active or ended, newest first."""
    return RolloutList(data=[RolloutOut.of(s) for s in await rollouts.recent(limit)])


@router.get("/rollouts/{route}")
async def status(route: str, rollouts: RolloutsDep, request: Request) -> RolloutOut:
    """The route's active rollout, or its latest one, with its quality signals per variant."""
    out = RolloutOut.of(await rollouts.status(route))
    signals = await summaries(request.app.state.quality_store, out.id)
    out.signals = [SignalOut.model_validate(s, from_attributes=True) for s in signals]
    return out


@router.post("/rollouts/{route}/assignments")
async def assignments(route: str, body: AssignBody, rollouts: RolloutsDep) -> AssignOut:
    """The variant each subject (a request's `user`) gets from the active rollout now."""
    rollout, variants = rollouts.variants(route, body.subjects)
    return AssignOut(
        rollout=rollout.id, stage=rollout.stage.value, weight=rollout.weight, variants=variants
    )


@router.get("/rollouts/{route}/shadow-pairs")
async def shadow_pairs(
    route: str,
    rollouts: RolloutsDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ShadowPairList:
    """(primary, shadow) answers of the route's active or latest rollout, oldest first."""
    pairs = await rollouts.shadow_pairs(route, after=after, limit=limit)
    return ShadowPairList(
        data=[ShadowPairOut.model_validate(p, from_attributes=True) for p in pairs]
    )


@router.post("/rollouts/{route}/{command}")
async def command(
    route: str,
    command: Command,
    rollouts: RolloutsDep,
    actor: ActorDep,
    body: CommandBody | None = None,
) -> RolloutOut:
    """Pause, resume, advance a step, promote, roll back or abort the active rollout."""
    body = body or CommandBody()
    status = await rollouts.command(
        route, command, actor=actor, reason=body.reason, force=body.force
    )
    return RolloutOut.of(status)
