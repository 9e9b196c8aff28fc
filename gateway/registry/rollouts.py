"""Rollouts in the registry: each change one transaction with its audit event.

The rules (which command may move a rollout where) live in `gateway.rollout.machine`; this
module applies what they decide. One active rollout per route is kept by a unique column
that holds the route only while the rollout is active. Sample counts are added in batches
by every gateway replica; shadow pairs are appended for the quality scorers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import Conflict, GatewayError
from gateway.registry.schema import (
    Adapter,
    AdapterVersionRow,
    AuditEvent,
    RolloutRow,
    RolloutSampleRow,
    RolloutStage,
    ShadowPairRow,
    VerdictRow,
)
from gateway.registry.store import SERVABLE

SHADOW_STEP = -1
ACTIVE = frozenset({RolloutStage.SHADOW, RolloutStage.CANARY})
Samples = dict[tuple[int, str], int]


@dataclass(frozen=True)
class Change:
    """What a command does to a rollout (decided by the state machine)."""

    stage: RolloutStage
    step: int
    weight: float
    paused: bool
    # The step changed: its clock and its sample counts start again.
    new_step: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """The rollout is over (its route is free for the next one)."""
        return self.stage not in ACTIVE


@dataclass(frozen=True)
class NewRollout:
    """A rollout about to start."""

    route: str
    stable_version: int
    candidate_version: int
    plan: dict[str, Any]
    pinned_candidate: bool


Decider = Callable[[RolloutRow, Samples, datetime], Change]
# Writes an event for webhook subscribers into the caller's open transaction (the outbox).
Announce = Callable[[Session, str, dict[str, Any]], object]
# The webhook event of each rollout action.
EVENTS = {
    "start": "rollout.started",
    "advance": "rollout.step_advanced",
    "promote": "rollout.promoted",
    "rollback": "rollout.rolled_back",
    "pause": "rollout.paused",
    "resume": "rollout.resumed",
    "abort": "rollout.aborted",
    "alarm": "rollout.alarm",
}


class RolloutStore:
    """Rollouts, their sample counts and shadow pairs in the registry's database."""

    def __init__(self, sessions: sessionmaker[Session], announce: Announce | None = None) -> None:
        self._sessions = sessions
        self._announce = announce

    def create(self, new: NewRollout, *, actor: str, reason: str = "") -> RolloutRow:
        """Start a rollout in shadow; Conflict when the route has an active one."""
        try:
            with self._sessions.begin() as session:
                adapter = session.scalar(select(Adapter).where(Adapter.name == new.route))
                if adapter is None:
                    raise Conflict(f"adapter {new.route!r} is not registered", param="route")
                for version in (new.stable_version, new.candidate_version):
                    _servable(session, adapter, version)
                if adapter.stable_version is None:
                    adapter.stable_version = new.stable_version
                row = RolloutRow(
                    route=new.route,
                    active_route=new.route,
                    stable_version=new.stable_version,
                    candidate_version=new.candidate_version,
                    stage=RolloutStage.SHADOW,
                    paused=False,
                    step=SHADOW_STEP,
                    weight=0.0,
                    plan=new.plan,
                    pinned_candidate=new.pinned_candidate,
                    created_by=actor,
                    reason=reason,
                )
                session.add(row)
                session.flush()
                detail = {
                    "stable": new.stable_version,
                    "candidate": new.candidate_version,
                    "plan": new.plan,
                }
                session.add(_event(row, "rollout:start", actor, reason, detail))
                self._tell(session, row, "start", actor, reason, detail)
                return row
        except IntegrityError as exc:
            raise Conflict(
                f"route {new.route!r} has an active rollout; finish it first",
                param="route",
                code="rollout_active",
            ) from exc

    def apply(
        self, rollout_id: int, action: str, decide: Decider, *, actor: str, reason: str = ""
    ) -> RolloutRow:
        """Apply what `decide` makes of the rollout as it is now, with its audit event."""
        with self._sessions.begin() as session:
            row = session.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                raise GatewayError(f"rollout {rollout_id} vanished")
            now = datetime.now(UTC)
            change = decide(row, _samples(session, rollout_id), now)
            before = {"stage": row.stage.value, "step": row.step, "weight": row.weight}
            row.stage, row.step, row.weight, row.paused = (
                change.stage,
                change.step,
                change.weight,
                change.paused,
            )
            if change.new_step:
                row.step_started_at = now
            if change.ended:
                row.active_route = None
                row.ended_at = now
                self._end(session, row, change.stage)
            after = {"stage": row.stage.value, "step": row.step, "weight": row.weight}
            detail = {"from": before, "to": after, "paused": row.paused, **change.detail}
            session.add(_event(row, f"rollout:{action}", actor, reason, detail))
            self._tell(session, row, action, actor, reason, detail)
            return row

    def note(
        self, rollout_id: int, action: str, *, actor: str, reason: str, detail: dict[str, Any]
    ) -> None:
        """Record something about a rollout that changes nothing in it (an alarm): an audit
        event and its webhook, in one transaction."""
        with self._sessions.begin() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise GatewayError(f"rollout {rollout_id} vanished")
            session.add(_event(row, f"rollout:{action}", actor, reason, detail))
            self._tell(session, row, action, actor, reason, detail)

    def _tell(
        self,
        session: Session,
        row: RolloutRow,
        action: str,
        actor: str,
        reason: str,
        detail: dict[str, Any],
    ) -> None:
        """The action's webhook, written in the transaction that makes the change."""
        event = EVENTS.get(action)
        if self._announce is None or event is None:
            return
        session.flush()
        self._announce(session, event, event_data(session, row, actor, reason, detail))

    @staticmethod
    def _end(session: Session, row: RolloutRow, stage: RolloutStage) -> None:
        adapter = session.scalar(select(Adapter).where(Adapter.name == row.route))
        if adapter is None:
            return
        candidate = session.scalar(
            select(AdapterVersionRow).where(
                AdapterVersionRow.adapter_id == adapter.id,
                AdapterVersionRow.version == row.candidate_version,
            )
        )
        if stage == RolloutStage.PROMOTED:
            if candidate is None or candidate.state not in SERVABLE:
                raise Conflict(
                    f"{row.route}@{row.candidate_version} can no longer serve; roll back",
                    param="version",
                )
            adapter.stable_version = row.candidate_version
        if candidate is not None and row.pinned_candidate:
            candidate.pinned = False

    def add_samples(self, counts: Mapping[tuple[int, int, str], int]) -> None:
        """Add request counts keyed by (rollout id, step, variant)."""
        with self._sessions.begin() as session:
            for (rollout_id, step, variant), n in counts.items():
                key = (
                    (RolloutSampleRow.rollout_id == rollout_id)
                    & (RolloutSampleRow.step == step)
                    & (RolloutSampleRow.variant == variant)
                )
                done = session.execute(
                    update(RolloutSampleRow).where(key).values(count=RolloutSampleRow.count + n)
                )
                if getattr(done, "rowcount", 0) == 0:
                    try:
                        with session.begin_nested():
                            session.add(
                                RolloutSampleRow(
                                    rollout_id=rollout_id, step=step, variant=variant, count=n
                                )
                            )
                    except IntegrityError:
                        # Another replica inserted the row first: add to it.
                        session.execute(
                            update(RolloutSampleRow)
                            .where(key)
                            .values(count=RolloutSampleRow.count + n)
                        )

    def samples(self, rollout_id: int) -> Samples:
        """Counts per (step, variant) of one rollout."""
        with self._sessions() as session:
            return _samples(session, rollout_id)

    def samples_of(self, rollout_ids: Sequence[int]) -> dict[int, Samples]:
        """Counts per (step, variant) of several rollouts, in one query."""
        counts: dict[int, Samples] = {rollout_id: {} for rollout_id in rollout_ids}
        if not rollout_ids:
            return counts
        with self._sessions() as session:
            rows = session.scalars(
                select(RolloutSampleRow).where(RolloutSampleRow.rollout_id.in_(rollout_ids))
            )
            for r in rows:
                counts[r.rollout_id][(r.step, r.variant)] = r.count
        return counts

    def add_pairs(self, pairs: Iterable[ShadowPairRow], *, limit: int) -> list[ShadowPairRow]:
        """Keep (primary, shadow) answers for comparison, at most `limit` per rollout; the
        pairs over the limit are returned (not stored)."""
        kept: list[ShadowPairRow] = []
        over: list[ShadowPairRow] = []
        with self._sessions.begin() as session:
            room: dict[int, int] = {}
            for pair in pairs:
                if pair.rollout_id not in room:
                    stored = session.scalar(
                        select(func.count()).where(ShadowPairRow.rollout_id == pair.rollout_id)
                    )
                    room[pair.rollout_id] = limit - (stored or 0)
                if room[pair.rollout_id] > 0:
                    room[pair.rollout_id] -= 1
                    kept.append(pair)
                else:
                    over.append(pair)
            session.add_all(kept)
        return over

    def pairs(
        self, rollout_id: int, *, after: int = 0, limit: int = 100
    ) -> Sequence[ShadowPairRow]:
        """Shadow pairs of a rollout, oldest first, after the pair id `after`."""
        with self._sessions() as session:
            query = (
                select(ShadowPairRow)
                .where(ShadowPairRow.rollout_id == rollout_id, ShadowPairRow.id > after)
                .order_by(ShadowPairRow.id)
                .limit(limit)
            )
            return session.scalars(query).all()

    def active(self) -> Sequence[RolloutRow]:
        """Every active rollout."""
        with self._sessions() as session:
            query = select(RolloutRow).where(RolloutRow.active_route.is_not(None))
            return session.scalars(query).all()

    def get(self, rollout_id: int) -> RolloutRow | None:
        """One rollout by id."""
        with self._sessions() as session:
            return session.get(RolloutRow, rollout_id)

    def latest(self, route: str) -> RolloutRow | None:
        """The route's active rollout, else its most recent one."""
        with self._sessions() as session:
            query = (
                select(RolloutRow)
                .where(RolloutRow.route == route)
                .order_by(RolloutRow.active_route.is_(None), RolloutRow.id.desc())
                .limit(1)
            )
            return session.scalar(query)

    def recent(self, limit: int = 50) -> Sequence[RolloutRow]:
        """The newest rollouts, active or ended, newest first."""
        with self._sessions() as session:
            query = select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit)
            return session.scalars(query).all()

    def events(self, row: RolloutRow, limit: int = 20) -> list[AuditEvent]:
        """The rollout's newest audit events, oldest first."""
        with self._sessions() as session:
            query = (
                select(AuditEvent)
                .where(AuditEvent.adapter == row.route, AuditEvent.action.like("rollout:%"))
                .order_by(AuditEvent.id.desc())
                .limit(50 * limit)
            )
            mine = [e for e in session.scalars(query) if e.detail.get("rollout") == row.id]
            return list(reversed(mine[:limit]))


def event_data(
    session: Session, row: RolloutRow, actor: str, reason: str, detail: dict[str, Any]
) -> dict[str, Any]:
    """What a rollout webhook tells: the rollout, both versions with their lineage (the
    pipeline's manifest), who did what and why, and the verdict behind it."""
    versions: dict[str, Any] = {}
    adapter = session.scalar(select(Adapter).where(Adapter.name == row.route))
    for role, number in (("stable", row.stable_version), ("candidate", row.candidate_version)):
        version = None
        if adapter is not None:
            version = session.scalar(
                select(AdapterVersionRow).where(
                    AdapterVersionRow.adapter_id == adapter.id,
                    AdapterVersionRow.version == number,
                )
            )
        versions[role] = {
            "name": row.route,
            "version": number,
            "sha256": version.sha256 if version is not None else None,
            "base_model": version.base_model if version is not None else None,
            "lineage": version.manifest if version is not None else {},
        }
    verdict = None
    verdict_id = detail.get("verdict")
    if isinstance(verdict_id, int):
        found = session.get(VerdictRow, verdict_id)
        if found is not None:
            verdict = {
                "id": found.id,
                "outcome": found.outcome,
                "reason": found.reason,
                "stage": found.stage,
                "step": found.step,
                "signals": found.signals,
            }
    return {
        "rollout": {
            "id": row.id,
            "route": row.route,
            "stage": row.stage.value,
            "step": row.step,
            "weight": row.weight,
            "paused": row.paused,
            "plan": row.plan,
        },
        "versions": versions,
        "actor": actor,
        "reason": reason,
        "detail": detail,
        "verdict": verdict,
    }


def _servable(session: Session, adapter: Adapter, version: int) -> AdapterVersionRow:
    row = session.scalar(
        select(AdapterVersionRow).where(
            AdapterVersionRow.adapter_id == adapter.id, AdapterVersionRow.version == version
        )
    )
    if row is None or row.state not in SERVABLE:
        state = "not registered" if row is None else row.state.value
        raise Conflict(f"{adapter.name}@{version} is {state}", param="version")
    return row


def _samples(session: Session, rollout_id: int) -> Samples:
    rows = session.scalars(
        select(RolloutSampleRow).where(RolloutSampleRow.rollout_id == rollout_id)
    )
    return {(r.step, r.variant): r.count for r in rows}


def _event(
    row: RolloutRow, action: str, actor: str, reason: str, detail: dict[str, Any]
) -> AuditEvent:
    return AuditEvent(
        actor=actor,
        action=action,
        adapter=row.route,
        version=row.candidate_version,
        reason=reason[:1024],
        detail={"rollout": row.id, **detail},
    )
