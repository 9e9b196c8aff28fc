"""The registry's operations, each one transaction: a crash leaves a change whole or absent.

Registration is idempotent per content: the same files (sha256) under the same name give the
version registered first; other files under that name give the next version number. Every
change writes its audit event in the same transaction as the change itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from gateway.errors import AdapterNotFound, Conflict
from gateway.registry.schema import (
    Adapter,
    AdapterVersionRow,
    AuditEvent,
    VersionState,
)

_S = VersionState
# Which state changes are allowed; `retired` is final. `ready` means loaded successfully and
# wanted resident; unloading it by hand makes it `registered` again (still servable).
TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    _S.REGISTERED: frozenset({_S.LOADING, _S.READY, _S.FAILED, _S.RETIRED}),
    _S.LOADING: frozenset({_S.READY, _S.FAILED, _S.REGISTERED}),
    _S.READY: frozenset({_S.LOADING, _S.REGISTERED, _S.FAILED, _S.RETIRED}),
    _S.FAILED: frozenset({_S.LOADING, _S.RETIRED}),
    _S.RETIRED: frozenset(),
}
# Versions clients may call (a registered one is loaded on demand).
SERVABLE = frozenset({_S.REGISTERED, _S.LOADING, _S.READY})
# Concurrent registrations of one name can collide on the version number; the loser retries.
REGISTER_ATTEMPTS = 3


@dataclass(frozen=True)
class VersionSpec:
    """What a new version is: validated files and what they say about themselves."""

    path: str
    sha256: str
    base_model: str
    rank: int
    target_modules: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """The version a registration resolved to, and whether this call created it."""

    version: AdapterVersionRow
    created: bool


class Registry:
    """Adapters, versions and the audit trail in one SQL database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def register(
        self,
        name: str,
        spec: VersionSpec,
        *,
        actor: str,
        reason: str = "",
        serve_first: bool = True,
    ) -> Registration:
        """Register `spec` under `name` (or find the version with the same content); a first
        version serves the name unless `serve_first` is False."""
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                return self._register_once(name, spec, actor, reason, serve_first)
            except IntegrityError:
                if attempt == REGISTER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _register_once(
        self, name: str, spec: VersionSpec, actor: str, reason: str, serve_first: bool
    ) -> Registration:
        with self._sessions.begin() as session:
            adapter = session.scalar(select(Adapter).where(Adapter.name == name))
            if adapter is None:
                adapter = Adapter(name=name)
                session.add(adapter)
                session.flush()
            same = session.scalar(
                select(AdapterVersionRow)
                .options(selectinload(AdapterVersionRow.adapter))
                .where(
                    AdapterVersionRow.adapter_id == adapter.id,
                    AdapterVersionRow.sha256 == spec.sha256,
                )
            )
            if same is not None:
                return Registration(same, created=False)
            newest = session.scalar(
                select(func.max(AdapterVersionRow.version)).where(
                    AdapterVersionRow.adapter_id == adapter.id
                )
            )
            # A deleted version leaves only its audit events; its number still means those
            # files to clients and to the trail, so it is never handed out again.
            issued = session.scalar(
                select(func.max(AuditEvent.version)).where(
                    AuditEvent.adapter == name, AuditEvent.action == "register"
                )
            )
            number = max(newest or 0, issued or 0) + 1
            if adapter.stable_version is None and serve_first:
                # The first version serves the name; later ones wait for a rollout.
                adapter.stable_version = number
            row = AdapterVersionRow(
                adapter=adapter,
                version=number,
                path=spec.path,
                sha256=spec.sha256,
                base_model=spec.base_model,
                rank=spec.rank,
                target_modules=list(spec.target_modules),
                manifest=dict(spec.manifest),
                state=VersionState.REGISTERED,
            )
            session.add(row)
            session.add(
                AuditEvent(
                    actor=actor,
                    action="register",
                    adapter=name,
                    version=row.version,
                    reason=reason,
                    detail={"sha256": spec.sha256, "path": spec.path},
                )
            )
            session.flush()
            return Registration(row, created=True)

    def set_state(
        self, name: str, version: int, state: VersionState, *, actor: str, reason: str = ""
    ) -> AdapterVersionRow:
        """Move a version to `state`, refusing changes `TRANSITIONS` does not allow."""
        with self._sessions.begin() as session:
            row = self._version_row(session, name, version)
            if state == row.state:
                return row
            if state not in TRANSITIONS[row.state]:
                raise Conflict(
                    f"{name}@{version} is {row.state.value}; it cannot become {state.value}",
                    param="state",
                )
            previous = row.state
            row.state = state
            if state == VersionState.RETIRED:
                row.pinned = False
            session.add(
                AuditEvent(
                    actor=actor,
                    action=f"state:{state.value}",
                    adapter=name,
                    version=version,
                    reason=reason,
                    detail={"from": previous.value},
                )
            )
            return row

    def set_pinned(
        self, name: str, version: int, pinned: bool, *, actor: str, reason: str = ""
    ) -> AdapterVersionRow:
        """Pin a servable version (never evicted) or unpin it."""
        with self._sessions.begin() as session:
            row = self._version_row(session, name, version)
            if row.pinned == pinned:
                return row
            if pinned and row.state not in SERVABLE:
                raise Conflict(
                    f"{name}@{version} is {row.state.value}; only a servable version can be pinned",
                    param="version",
                )
            row.pinned = pinned
            session.add(
                AuditEvent(
                    actor=actor,
                    action="pin" if pinned else "unpin",
                    adapter=name,
                    version=version,
                    reason=reason,
                )
            )
            return row

    def set_stable(
        self, name: str, version: int, *, actor: str, reason: str = "", action: str = "stable"
    ) -> AdapterVersionRow:
        """Make a servable version the one its name serves."""
        with self._sessions.begin() as session:
            row = self._version_row(session, name, version)
            if row.state not in SERVABLE:
                raise Conflict(
                    f"{name}@{version} is {row.state.value}; only a servable version can be "
                    "made stable",
                    param="version",
                )
            previous = row.adapter.stable_version
            if previous == version:
                return row
            row.adapter.stable_version = version
            session.add(
                AuditEvent(
                    actor=actor,
                    action=action,
                    adapter=name,
                    version=version,
                    reason=reason,
                    detail={"from": previous},
                )
            )
            return row

    def delete(self, name: str, version: int, *, actor: str, reason: str = "") -> None:
        """Remove a retired or failed version (its audit trail stays)."""
        with self._sessions.begin() as session:
            row = self._version_row(session, name, version)
            if row.state in SERVABLE:
                raise Conflict(
                    f"{name}@{version} is {row.state.value} and may serve traffic; retire it first",
                    param="version",
                )
            adapter = row.adapter
            session.delete(row)
            session.add(
                AuditEvent(
                    actor=actor,
                    action="delete",
                    adapter=name,
                    version=version,
                    reason=reason,
                    detail={"sha256": row.sha256, "state": row.state.value},
                )
            )
            session.flush()
            if not session.scalar(
                select(func.count()).where(AdapterVersionRow.adapter_id == adapter.id)
            ):
                session.delete(adapter)

    def record_refusal(
        self, name: str, message: str, detail: dict[str, Any], *, actor: str
    ) -> None:
        """Audit a registration that validation refused (no version is created)."""
        with self._sessions.begin() as session:
            session.add(
                AuditEvent(
                    actor=actor,
                    action="register:failed",
                    adapter=name,
                    version=None,
                    reason=message[:1024],
                    detail=detail,
                )
            )

    def recover_interrupted(self, *, actor: str) -> list[AdapterVersionRow]:
        """Versions left `loading` by a crash go back to `registered` (loaded again on demand)."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(AdapterVersionRow)
                .options(selectinload(AdapterVersionRow.adapter))
                .where(AdapterVersionRow.state == VersionState.LOADING)
            ).all()
            for row in rows:
                row.state = VersionState.REGISTERED
                session.add(
                    AuditEvent(
                        actor=actor,
                        action="state:registered",
                        adapter=row.adapter.name,
                        version=row.version,
                        reason="a load was interrupted by a restart",
                        detail={"from": VersionState.LOADING.value},
                    )
                )
            return list(rows)

    def servable(self) -> Sequence[AdapterVersionRow]:
        """Every version clients may call, with its adapter loaded."""
        with self._sessions() as session:
            query = (
                select(AdapterVersionRow)
                .options(selectinload(AdapterVersionRow.adapter))
                .where(AdapterVersionRow.state.in_(SERVABLE))
                .order_by(AdapterVersionRow.adapter_id, AdapterVersionRow.version)
            )
            return session.scalars(query).all()

    def last_event_id(self) -> int:
        """The newest audit event's id: it changes with every change to the registry."""
        with self._sessions() as session:
            return session.scalar(select(func.max(AuditEvent.id))) or 0

    def version(self, name: str, version: int | None = None) -> AdapterVersionRow:
        """One version; without a number, the newest one that is not retired."""
        with self._sessions() as session:
            if version is not None:
                return self._version_row(session, name, version)
            row = session.scalar(
                select(AdapterVersionRow)
                .join(Adapter)
                .where(Adapter.name == name, AdapterVersionRow.state.in_(SERVABLE))
                .order_by(AdapterVersionRow.version.desc())
                .limit(1)
            )
            if row is None:
                raise AdapterNotFound(f"adapter {name!r} has no servable version", param="name")
            return row

    def adapters(self) -> Sequence[Adapter]:
        """Every adapter with its versions, by name."""
        with self._sessions() as session:
            query = select(Adapter).options(selectinload(Adapter.versions)).order_by(Adapter.name)
            return session.scalars(query).all()

    def adapter(self, name: str) -> Adapter:
        """One adapter with its versions."""
        with self._sessions() as session:
            adapter = session.scalar(
                select(Adapter).options(selectinload(Adapter.versions)).where(Adapter.name == name)
            )
            if adapter is None:
                raise AdapterNotFound(f"adapter {name!r} is not registered", param="name")
            return adapter

    def audit(self, name: str | None = None, limit: int | None = None) -> Sequence[AuditEvent]:
        """The audit trail, oldest first (of one adapter, or of all; the newest `limit`)."""
        with self._sessions() as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc())
            if name is not None:
                query = query.where(AuditEvent.adapter == name)
            if limit is not None:
                query = query.limit(limit)
            return list(reversed(session.scalars(query).all()))

    @staticmethod
    def _version_row(session: Session, name: str, version: int) -> AdapterVersionRow:
        row = session.scalar(
            select(AdapterVersionRow)
            .join(Adapter)
            .options(selectinload(AdapterVersionRow.adapter))
            .where(Adapter.name == name, AdapterVersionRow.version == version)
        )
        if row is None:
            raise AdapterNotFound(f"adapter {name}@{version} is not registered", param="version")
        return row
