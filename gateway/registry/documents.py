"""Documents the registry keeps whole, like route tables, scorer configurations and SLO files:
one row per replacement (the newest is in use), each replacement and each refusal an audit
event."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.registry.schema import (
    AuditEvent,
    RouteTableRow,
    ScorerConfigRow,
    SloConfigRow,
    WholeDocumentRow,
)

Row = TypeVar("Row", bound=WholeDocumentRow)


class WholeDocuments(Generic[Row]):
    """The versions of one kind of document: `routes` (route tables), `scorers` or `slos`."""

    def __init__(
        self, sessions: sessionmaker[Session], model: type[Row], kind: str, id_key: str
    ) -> None:
        self._sessions = sessions
        self._model: type[Row] = model
        self._kind = kind
        # What the audit event calls the new row's id.
        self._id_key = id_key

    def put(
        self, source: str, sha256: str, routes: dict[str, Any], *, actor: str, reason: str = ""
    ) -> Row:
        """Make `source` the document in use (a new row and its audit event)."""
        with self._sessions.begin() as session:
            row = self._model()
            row.source, row.sha256, row.routes = source, sha256, routes
            row.created_by, row.reason = actor, reason
            session.add(row)
            session.flush()
            detail = {self._id_key: row.id, "sha256": sha256, "routes": routes}
            session.add(_event(actor, f"{self._kind}:replace", reason, detail))
            return row

    def record_refusal(self, message: str, sha256: str, *, actor: str) -> None:
        """Audit a document that validation refused (the one in use stays)."""
        with self._sessions.begin() as session:
            session.add(_event(actor, f"{self._kind}:refused", message[:1024], {"sha256": sha256}))

    def newest(self) -> Row | None:
        """The document in use, or None when there is none."""
        with self._sessions() as session:
            return session.scalar(select(self._model).order_by(self._model.id.desc()).limit(1))

    def newest_id(self) -> int:
        """The id of the document in use (0: none)."""
        with self._sessions() as session:
            return session.scalar(select(func.max(self._model.id))) or 0


def _event(actor: str, action: str, reason: str, detail: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        actor=actor, action=action, adapter="", version=None, reason=reason, detail=detail
    )


def route_tables(sessions: sessionmaker[Session]) -> WholeDocuments[RouteTableRow]:
    """The route tables of `model: "auto"`."""
    return WholeDocuments(sessions, RouteTableRow, "routes", "table")


def scorer_configs(sessions: sessionmaker[Session]) -> WholeDocuments[ScorerConfigRow]:
    """The quality scorers' configurations."""
    return WholeDocuments(sessions, ScorerConfigRow, "scorers", "config")


def slo_configs(sessions: sessionmaker[Session]) -> WholeDocuments[SloConfigRow]:
    """The per-route SLO files of rollout analysis."""
    return WholeDocuments(sessions, SloConfigRow, "slos", "file")
