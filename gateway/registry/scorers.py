"""Scorer configurations in the registry: kept whole, one row per replacement (the newest is
in use), each replacement and each refusal an audit event, like route tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.registry.schema import AuditEvent, ScorerConfigRow


class ScorerConfigStore:
    """The scorer configurations of the registry."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def put(
        self, source: str, sha256: str, routes: dict[str, Any], *, actor: str, reason: str = ""
    ) -> ScorerConfigRow:
        """Make `source` the configuration in use (a new row and its audit event)."""
        with self._sessions.begin() as session:
            row = ScorerConfigRow(
                source=source, sha256=sha256, routes=routes, created_by=actor, reason=reason
            )
            session.add(row)
            session.flush()
            session.add(
                AuditEvent(
                    actor=actor,
                    action="scorers:replace",
                    adapter="",
                    version=None,
                    reason=reason,
                    detail={"config": row.id, "sha256": sha256, "routes": routes},
                )
            )
            return row

    def record_refusal(self, message: str, sha256: str, *, actor: str) -> None:
        """Audit a configuration that validation refused (the one in use stays)."""
        with self._sessions.begin() as session:
            session.add(
                AuditEvent(
                    actor=actor,
                    action="scorers:refused",
                    adapter="",
                    version=None,
                    reason=message[:1024],
                    detail={"sha256": sha256},
                )
            )

    def newest(self) -> ScorerConfigRow | None:
        """The configuration in use, or None when there is none."""
        with self._sessions() as session:
            return session.scalar(
                select(ScorerConfigRow).order_by(ScorerConfigRow.id.desc()).limit(1)
            )

    def newest_id(self) -> int:
        """The id of the configuration in use (0: none)."""
        with self._sessions() as session:
            return session.scalar(select(func.max(ScorerConfigRow.id))) or 0
