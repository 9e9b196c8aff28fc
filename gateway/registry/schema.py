"""Tables of the adapter registry (SQLAlchemy 2 declarative; migrations in `migrations/`).

An adapter is a name clients put in `model`; it has numbered versions. A version points at
its files (a directory under an adapter root), records what they are (sha256, base model,
rank, target modules, the pipeline's manifest) and where it is in its life (`VersionState`).
Every change is an `AuditEvent`. Route tables of `model: "auto"` are kept whole, one row per
replacement (`RouteTableRow`; the newest is in use). A rollout (`RolloutRow`) moves a route
from its stable version to a candidate version; its request counts per step and variant are
`RolloutSampleRow`s and the shadow answers kept for comparison are `ShadowPairRow`s.

Quality: the scorers of each route are kept whole like route tables (`ScorerConfigRow`, the
newest is in use); every answered request is a `ResponseRow` (its text only when kept);
users' ratings are `FeedbackRow`s and scorers' results `ScoreRow`s. Both feed per-rollout,
per-variant running sums (`SignalAggregateRow`) and a bounded sample of raw values
(`SignalReservoirRow`), updated in the transaction that stores the rating or the score.

Rollout analysis: each route's SLOs are kept whole like route tables (`SloConfigRow`, the
newest is in use).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite keeps no zone: add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class VersionState(enum.StrEnum):
    """Where an adapter version is in its life."""

    REGISTERED = "registered"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"


class RolloutStage(enum.StrEnum):
    """Where a rollout is: shadow, then canary steps, then one of three ends."""

    SHADOW = "shadow"
    CANARY = "canary"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


def _enum(kind: type[enum.StrEnum], name: str) -> Enum:
    return Enum(kind, name=name, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # The version the name serves (set by the first registration and by a promotion); when
    # it cannot serve, the newest servable version does.
    stable_version: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[AdapterVersionRow]] = relationship(
        back_populates="adapter", order_by="AdapterVersionRow.version"
    )


class AdapterVersionRow(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version", name="uq_adapter_version"),
        # The same files under the same name are the same version (idempotent registration).
        UniqueConstraint("adapter_id", "sha256", name="uq_adapter_content"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[int]
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(256))
    rank: Mapped[int]
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[VersionState] = mapped_column(
        _enum(VersionState, "version_state"), default=VersionState.REGISTERED
    )
    # Never evicted from a replica (an operator or an active rollout needs it resident).
    pinned: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Always loaded with the version: rows are read after their session closed.
    adapter: Mapped[Adapter] = relationship(back_populates="versions", lazy="joined")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    adapter: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int | None]
    reason: Mapped[str] = mapped_column(String(1024), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WholeDocumentRow:
    """A document kept whole, one row per replacement (the newest is in use)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # The document as the operator wrote it (YAML), comments and all.
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    # Route name -> what the document gives it (its adapter; its scorers), for the trail.
    routes: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RouteTableRow(WholeDocumentRow, Base):
    __tablename__ = "route_tables"


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    route: Mapped[str] = mapped_column(String(128), index=True)
    # The route while the rollout is active, else NULL: the unique index allows one active
    # rollout per route on every database (NULLs never collide).
    active_route: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    stable_version: Mapped[int]
    candidate_version: Mapped[int]
    stage: Mapped[RolloutStage] = mapped_column(_enum(RolloutStage, "rollout_stage"))
    paused: Mapped[bool] = mapped_column(default=False)
    # -1 in shadow; the canary step's index in canary (kept at the end for the record).
    step: Mapped[int] = mapped_column(default=-1)
    # The canary's share of the route's requests, in percent.
    weight: Mapped[float] = mapped_column(default=0.0)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The rollout pinned the candidate (it was not pinned before): it unpins it at the end.
    pinned_candidate: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    step_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True, default=None)


class RolloutSampleRow(Base):
    __tablename__ = "rollout_samples"

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    # -1: the shadow stage; otherwise the canary step's index.
    step: Mapped[int] = mapped_column(primary_key=True)
    # `stable` and `canary` requests served, `shadow` candidate answers completed.
    variant: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)


class ShadowPairRow(Base):
    __tablename__ = "shadow_pairs"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    primary_version: Mapped[int]
    primary_status: Mapped[int]
    primary_body: Mapped[str] = mapped_column(Text)
    primary_ms: Mapped[float]
    shadow_version: Mapped[int]
    shadow_status: Mapped[int]
    shadow_body: Mapped[str] = mapped_column(Text)
    shadow_ms: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScorerConfigRow(WholeDocumentRow, Base):
    __tablename__ = "scorer_configs"


class SloConfigRow(WholeDocumentRow, Base):
    __tablename__ = "slo_configs"


class ResponseRow(Base):
    __tablename__ = "responses"
    # Request ids may come from clients: they are unique per tenant, and a tenant only ever
    # finds its own.
    __table_args__ = (UniqueConstraint("tenant", "request_id", name="uq_response_tenant_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    # The route (adapter name) that served, or the base model's name.
    route: Mapped[str] = mapped_column(String(256))
    version: Mapped[int | None]
    # stable or canary under a rollout, else NULL.
    variant: Mapped[str | None] = mapped_column(String(16))
    rollout_id: Mapped[int | None] = mapped_column(index=True)
    status: Mapped[int]
    stream: Mapped[bool]
    latency_ms: Mapped[float]
    ttft_ms: Mapped[float | None]
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    prompt_text: Mapped[str | None] = mapped_column(Text)
    answer_text: Mapped[str | None] = mapped_column(Text)


class FeedbackRow(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), unique=True
    )
    # The rating as sent (`{"thumbs": "up"}`, `{"score": 4}`, `{"value": 0.8}`) and its value
    # on one scale, 0 (bad) to 1 (good).
    rating: Mapped[dict[str, Any]] = mapped_column(JSON)
    value: Mapped[float]
    comment: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON)
    # Earlier ratings of the same response, oldest first.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoreRow(Base):
    __tablename__ = "scores"
    # One score per scorer and answer: `r<response id>` or `p<pair id>:<side>`.
    __table_args__ = (UniqueConstraint("subject", "scorer", name="uq_score_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(160))
    response_id: Mapped[int | None] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), index=True
    )
    rollout_id: Mapped[int | None] = mapped_column(index=True)
    route: Mapped[str] = mapped_column(String(256))
    version: Mapped[int | None]
    variant: Mapped[str | None] = mapped_column(String(16))
    scorer: Mapped[str] = mapped_column(String(64))
    value: Mapped[float]
    passed: Mapped[bool | None]
    detail: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SignalAggregateRow(Base):
    __tablename__ = "signal_aggregates"

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    # stable, canary, shadow (the candidate's shadow answers) or paired (shadow minus stable
    # on the same request).
    variant: Mapped[str] = mapped_column(String(16), primary_key=True)
    # `satisfaction` (feedback) or a scorer's name.
    signal: Mapped[str] = mapped_column(String(80), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)
    total: Mapped[float] = mapped_column(default=0.0)
    total_sq: Mapped[float] = mapped_column(default=0.0)
    # Pass/fail signals (verifiers, thumbs); both 0 for plain numbers.
    passes: Mapped[int] = mapped_column(default=0)
    fails: Mapped[int] = mapped_column(default=0)


class SignalReservoirRow(Base):
    __tablename__ = "signal_reservoir"

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    variant: Mapped[str] = mapped_column(String(16), primary_key=True)
    signal: Mapped[str] = mapped_column(String(80), primary_key=True)
    # Each item hashes to one slot; a slot keeps the item with the lowest rank (a second
    # hash), so the sample is the same whatever order replicas write in.
    slot: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(160))
    rank: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float]


class RolloutAnalysisRow(Base):
    __tablename__ = "rollout_analysis"

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    # The sequential tests' running state and the baselines they compare from: a new
    # leader resumes from here.
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    looks: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class VerdictRow(Base):
    __tablename__ = "rollout_verdicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    stage: Mapped[str] = mapped_column(String(16))
    step: Mapped[int]
    # pass, fail, wait or inconclusive.
    outcome: Mapped[str] = mapped_column(String(16))
    # What the verdict asks for (advance, promote, rollback, pause or none) and whether it
    # was done (not in a dry run, not overtaken by an operator).
    action: Mapped[str] = mapped_column(String(16))
    acted: Mapped[bool] = mapped_column(default=False)
    dry_run: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(String(1024))
    # Per signal: sample sizes, estimates, interval, margin, threshold, decision and why.
    signals: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    leader: Mapped[str] = mapped_column(String(128))


class HookSubscriptionRow(Base):
    __tablename__ = "hook_subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    # The signing secret (`whsec_` + base64), never shown after creation.
    secret: Mapped[str] = mapped_column(String(256))
    # Event types delivered (empty: every one).
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(1024), default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HookMessageRow(Base):
    __tablename__ = "hook_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("hook_subscriptions.id", ondelete="CASCADE"), index=True
    )
    # `webhook-id`: the same on every attempt, so receivers drop duplicates.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String(64))
    # The body exactly as signed and sent.
    body: Mapped[str] = mapped_column(Text)
    # pending, delivered or dead.
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    deadline_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True, default=None)
    last_status: Mapped[int | None] = mapped_column(nullable=True, default=None)
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True, default=None)


class HookAttemptRow(Base):
    __tablename__ = "hook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("hook_outbox.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # The receiver's HTTP status (None: no answer) and how long the attempt took.
    status: Mapped[int | None]
    latency_ms: Mapped[float]
    error: Mapped[str | None] = mapped_column(String(512), nullable=True)
