"""Rollout analysis in the registry: what each look reads, its running state and verdicts.

The state of a rollout's tests is written at every look (one row per rollout, replaced);
a verdict is kept when something changed (its outcome, a signal's decision, an action)
and at least every `heartbeat_s` otherwise, so the history stays readable and bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.registry.quality import Totals
from gateway.registry.rollouts import Announce, event_data
from gateway.registry.schema import (
    ResponseRow,
    RolloutAnalysisRow,
    RolloutRow,
    VerdictRow,
    utcnow,
)

# Answers read per look for the latency signals (the rest waits for the next look).
MAX_LATENCIES = 20_000


@dataclass(frozen=True)
class LatencySample:
    """An answered request's latency and time to first token, by variant."""

    variant: str
    latency_ms: float
    ttft_ms: float | None


class AnalysisStore:
    """The analysis's reads and writes."""

    def __init__(self, sessions: sessionmaker[Session], announce: Announce | None = None) -> None:
        self._sessions = sessions
        self._announce = announce

    def requests(self, rollout_id: int) -> dict[str, Totals]:
        """Requests per variant of a rollout: passes answered, fails 5xx."""
        errors = func.sum(case((ResponseRow.status >= 500, 1), else_=0))
        query = (
            select(ResponseRow.variant, func.count(), errors)
            .where(ResponseRow.rollout_id == rollout_id, ResponseRow.variant.is_not(None))
            .group_by(ResponseRow.variant)
        )
        with self._sessions() as session:
            rows = session.execute(query).all()
        out: dict[str, Totals] = {}
        for variant, count, failed in rows:
            failed = int(failed or 0)
            out[str(variant)] = Totals(int(count), 0.0, 0.0, int(count) - failed, failed)
        return out

    def latencies(self, rollout_id: int, after: int) -> tuple[list[LatencySample], int]:
        """Answered requests' latencies after response id `after`, and the newest id read."""
        query = (
            select(ResponseRow.id, ResponseRow.variant, ResponseRow.latency_ms, ResponseRow.ttft_ms)
            .where(
                ResponseRow.rollout_id == rollout_id,
                ResponseRow.id > after,
                ResponseRow.status < 400,
                ResponseRow.variant.is_not(None),
            )
            .order_by(ResponseRow.id)
            .limit(MAX_LATENCIES)
        )
        with self._sessions() as session:
            rows = session.execute(query).all()
        samples = [LatencySample(str(v), float(ms), ttft) for _, v, ms, ttft in rows]
        return samples, (rows[-1][0] if rows else after)

    def state(self, rollout_id: int) -> tuple[dict[str, Any], int]:
        """A rollout's stored analysis state and how many looks made it."""
        with self._sessions() as session:
            row = session.get(RolloutAnalysisRow, rollout_id)
            return (dict(row.state), row.looks) if row is not None else ({}, 0)

    def save(
        self,
        rollout_id: int,
        state: dict[str, Any],
        verdict: VerdictRow | None,
        *,
        announce: bool = False,
    ) -> VerdictRow | None:
        """Replace the state and keep the verdict (if any), in one transaction; `announce`
        writes its `rollout.verdict` webhook in the same transaction."""
        with self._sessions.begin() as session:
            row = session.get(RolloutAnalysisRow, rollout_id, with_for_update=True)
            if row is None:
                row = RolloutAnalysisRow(rollout_id=rollout_id, state=state, looks=0)
                session.add(row)
            row.state = state
            row.looks += 1
            row.updated_at = utcnow()
            if verdict is not None:
                session.add(verdict)
                if announce and self._announce is not None:
                    session.flush()
                    rollout = session.get(RolloutRow, rollout_id)
                    if rollout is not None:
                        data = event_data(
                            session,
                            rollout,
                            verdict.leader,
                            verdict.reason,
                            {"verdict": verdict.id},
                        )
                        self._announce(session, "rollout.verdict", data)
            return verdict

    def update_state(self, rollout_id: int, state: dict[str, Any]) -> None:
        """Replace a rollout's stored state (between looks)."""
        with self._sessions.begin() as session:
            row = session.get(RolloutAnalysisRow, rollout_id, with_for_update=True)
            if row is not None:
                row.state = state

    def mark_acted(self, verdict_id: int, acted: bool, note: str) -> None:
        """Record whether the verdict's action was taken (and why not)."""
        with self._sessions.begin() as session:
            row = session.get(VerdictRow, verdict_id)
            if row is not None:
                row.acted = acted
                if note:
                    row.reason = f"{row.reason}; {note}"[:1024]

    def verdicts(self, rollout_id: int, limit: int = 100) -> Sequence[VerdictRow]:
        """A rollout's verdicts, newest first."""
        with self._sessions() as session:
            query = (
                select(VerdictRow)
                .where(VerdictRow.rollout_id == rollout_id)
                .order_by(VerdictRow.id.desc())
                .limit(limit)
            )
            return session.scalars(query).all()

    def latest(self, rollout_id: int) -> VerdictRow | None:
        """A rollout's newest verdict."""
        found = self.verdicts(rollout_id, limit=1)
        return found[0] if found else None
