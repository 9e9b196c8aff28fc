"""Bodies and answers of the rollout admin API (`/admin/rollouts`). Bodies refuse unknown fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway.api.adapter_models import AdminBody, AuditOut
from gateway.rollout.manager import RolloutStatus
from gateway.rollout.plan import step_name

_Reason = Field(default="", max_length=1024)


class StartBody(AdminBody):
    """Start a rollout of `route@version` with a plan (the default plan when omitted)."""

    route: str = Field(min_length=1, max_length=63)
    version: int = Field(ge=1)
    # Checked by the rollout's own plan model, so that every problem comes back in one 400.
    plan: dict[str, Any] | None = None
    reason: str = _Reason


class CommandBody(AdminBody):
    """Why; `force` moves past a step's unmet minimums (advance, promote)."""

    reason: str = _Reason
    force: bool = False


class AssignBody(AdminBody):
    """Subjects (`user` values) to place in the route's active rollout."""

    subjects: list[str] = Field(min_length=1, max_length=100_000)


class AssignOut(BaseModel):
    rollout: int
    stage: str
    weight: float
    variants: list[Literal["stable", "canary"]]


class StepSamples(BaseModel):
    """Requests per variant in one step (`shadow`: successful shadow answers)."""

    step: int
    name: str
    counts: dict[str, int]


class SignalOut(BaseModel):
    """One quality signal of one variant (`paired`: candidate minus stable on shadow pairs)."""

    variant: str
    signal: str
    count: int
    mean: float | None
    sd: float | None
    passes: int
    fails: int


class RolloutOut(BaseModel):
    """A rollout: where it is, what it has seen, what it still needs, what was decided."""

    id: int
    route: str
    stable_version: int
    candidate_version: int
    stage: str
    active: bool
    paused: bool
    step: int
    steps: int
    weight: float
    plan: dict[str, Any]
    created_by: str
    reason: str
    created_at: datetime
    step_started_at: datetime
    time_in_step_s: float
    ended_at: datetime | None
    samples: list[StepSamples]
    totals: dict[str, int]
    missing: list[str]
    warm_here: bool
    events: list[AuditOut]
    # Filled in by the status read only.
    signals: list[SignalOut] = []

    @classmethod
    def of(cls, status: RolloutStatus) -> RolloutOut:
        """From a rollout's status."""
        row = status.row
        steps: dict[int, dict[str, int]] = {}
        totals: dict[str, int] = {}
        for (step, variant), count in sorted(status.samples.items()):
            steps.setdefault(step, {})[variant] = count
            totals[variant] = totals.get(variant, 0) + count
        canary = row.plan.get("canary", [])
        end = row.ended_at or datetime.now(UTC)
        return cls(
            id=row.id,
            route=row.route,
            stable_version=row.stable_version,
            candidate_version=row.candidate_version,
            stage=row.stage.value,
            active=row.active_route is not None,
            paused=row.paused,
            step=row.step,
            steps=len(canary),
            weight=row.weight,
            plan=row.plan,
            created_by=row.created_by,
            reason=row.reason,
            created_at=row.created_at,
            step_started_at=row.step_started_at,
            time_in_step_s=round((end - row.step_started_at).total_seconds(), 3),
            ended_at=row.ended_at,
            samples=[
                StepSamples(step=s, name=step_name(s, canary), counts=c) for s, c in steps.items()
            ],
            totals=totals,
            missing=status.missing,
            warm_here=status.warm_here,
            events=[AuditOut.of(e) for e in status.events],
        )


class RolloutList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RolloutOut]


class ShadowPairOut(BaseModel):
    """A request answered by the stable version and, in the shadow, by the candidate."""

    id: int
    rollout_id: int
    request_id: str
    endpoint: str
    request: dict[str, Any]
    primary_version: int
    primary_status: int
    primary_body: str
    primary_ms: float
    shadow_version: int
    shadow_status: int
    shadow_body: str
    shadow_ms: float
    created_at: datetime


class ShadowPairList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ShadowPairOut]
