"""The delivery worker's side of the outbox: claiming due messages and recording attempts.

Claiming a message is a lease, not a lock held across the network call: one short
transaction moves the message's `next_attempt_at` to the end of the lease (the attempt's
timeout and a margin), so no other worker, in this process, another replica or a restarted
one, finds it due while it is being sent. The claim is one `UPDATE ... WHERE id IN (due
messages) RETURNING`; on PostgreSQL the inner select is `FOR UPDATE SKIP LOCKED`, so two
replicas claiming at once take different messages instead of waiting for each other; on
SQLite the statement takes the database's write lock and re-checks that each message is
still due. A worker that dies mid-attempt leaves the lease to run out: the message is then
due again and sent again (at least once; receivers drop duplicates by `webhook-id`).

Each attempt's outcome, its `HookAttemptRow` and the message's new state (delivered, a
retry time, or dead) are written in one transaction, which also ends the lease. A message
found due after its deadline (no worker ran for that long) is marked dead unsent: the
deadline is the last moment it may be tried (a last retry scheduled just before it still
goes out; the worker allows one lease of lateness).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Select, Update, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from gateway.hooks.outbox import DEAD, DELIVERED, PENDING
from gateway.registry.schema import HookAttemptRow, HookMessageRow, HookSubscriptionRow, utcnow

MAX_ERROR_CHARS = 512
EXPIRED = "deadline passed before it could be sent"


@dataclass(frozen=True)
class Claim:
    """A message this worker holds the lease of, with where and how to send it."""

    id: int
    message_id: str
    subscription_id: int
    event: str
    body: str
    url: str
    secret: str = field(repr=False)
    attempts: int
    created_at: datetime
    deadline_at: datetime


@dataclass(frozen=True)
class Attempt:
    """What one attempt got: the receiver's status (None: no answer) or why it failed."""

    at: datetime
    status: int | None
    latency_ms: float
    error: str | None

    @property
    def ok(self) -> bool:
        """The receiver took the message (any 2xx)."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Expired:
    """A message whose deadline passed while nobody could send it (now dead, never sent)."""

    message_id: str
    event: str
    subscription_id: int


@dataclass(frozen=True)
class Batch:
    """What one claim took: messages to send now, and messages given up on."""

    claims: list[Claim]
    expired: list[Expired]


class Outcome(enum.StrEnum):
    """What became of a message after an attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    # The message was finished meanwhile (removed subscription, a lease that ran out).
    STALE = "stale"


class Claims:
    """Leases on due outbox messages and the record of each attempt."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def claim(
        self,
        now: datetime,
        lease_until: datetime,
        *,
        limit: int,
        busy: Mapping[int, int],
        per_subscription: int,
        stale_before: datetime | None = None,
    ) -> Batch:
        """Lease up to `limit` due messages of active subscriptions, oldest first, at most
        `per_subscription` in flight per subscription counting the `busy` ones; due messages
        whose deadline was before `stale_before` are marked dead instead (never sent late)."""
        if not self._any_due(now):
            return Batch([], [])
        full = [sub for sub, n in busy.items() if n >= per_subscription]
        inner = aliased(HookMessageRow)
        due = (
            select(inner.id)
            .where(
                inner.status == PENDING,
                inner.next_attempt_at <= now,
                inner.subscription_id.in_(_active()),
            )
            .order_by(inner.next_attempt_at, inner.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if full:
            due = due.where(inner.subscription_id.not_in(full))
        with self._sessions.begin() as session:
            expired = [] if stale_before is None else _expire(session, now, stale_before)
            leased = session.execute(
                self._lease(lease_until, HookMessageRow.id.in_(due), now=now).returning(
                    HookMessageRow.id, HookMessageRow.subscription_id
                )
            ).tuples()
            kept, extra = _within_caps(list(leased), busy, per_subscription)
            if extra:
                # Give back what would wait for a slot: a lease must only cover the send.
                session.execute(
                    update(HookMessageRow)
                    .where(HookMessageRow.id.in_(extra))
                    .values(next_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
            return Batch(_claims(session, kept), expired)

    def _any_due(self, now: datetime) -> bool:
        # A read first: an idle worker never takes SQLite's write lock (an UPDATE does,
        # even one that matches nothing) and so never holds up the gateway's writers.
        with self._sessions() as session:
            return (
                session.scalar(
                    select(HookMessageRow.id)
                    .where(HookMessageRow.status == PENDING, HookMessageRow.next_attempt_at <= now)
                    .limit(1)
                )
                is not None
            )

    def claim_one(self, message_id: str, lease_until: datetime) -> Claim | None:
        """Lease one pending message whatever its schedule (one held back for the caller by
        `Outbox.send_test`); None when it is not pending or its subscription was removed."""
        with self._sessions.begin() as session:
            leased = session.scalars(
                self._lease(
                    lease_until,
                    HookMessageRow.message_id == message_id,
                    HookMessageRow.subscription_id.in_(_active()),
                ).returning(HookMessageRow.id)
            ).all()
            return next(iter(_claims(session, list(leased))), None)

    @staticmethod
    def _lease(
        lease_until: datetime, *where: ColumnElement[bool], now: datetime | None = None
    ) -> Update:
        statement = update(HookMessageRow).where(HookMessageRow.status == PENDING, *where)
        if now is not None:
            # Re-checked under the write lock: another worker may have leased it meanwhile.
            statement = statement.where(HookMessageRow.next_attempt_at <= now)
        return statement.values(next_attempt_at=lease_until).execution_options(
            synchronize_session=False
        )

    def finish(self, claim: Claim, attempt: Attempt, retry_at: datetime) -> Outcome:
        """Record `attempt` and what follows: delivered, tried again at `retry_at`, or dead
        when `retry_at` is past the message's deadline."""
        with self._sessions.begin() as session:
            row = session.get(HookMessageRow, claim.id, with_for_update=True)
            if row is None:
                return Outcome.STALE
            error = None if attempt.error is None else attempt.error[:MAX_ERROR_CHARS]
            session.add(
                HookAttemptRow(
                    message_id=row.id,
                    at=attempt.at,
                    status=attempt.status,
                    latency_ms=attempt.latency_ms,
                    error=error,
                )
            )
            row.attempts += 1
            row.last_status, row.last_error = attempt.status, error
            if attempt.ok:
                if row.status == DELIVERED:
                    return Outcome.STALE
                row.status, row.delivered_at = DELIVERED, utcnow()
                return Outcome.DELIVERED
            if row.status != PENDING:
                return Outcome.STALE
            if retry_at > row.deadline_at:
                row.status = DEAD
                return Outcome.DEAD
            row.next_attempt_at = retry_at
            return Outcome.RETRY


def _active() -> Select[int]:
    return select(HookSubscriptionRow.id).where(HookSubscriptionRow.active.is_(True))


def _expire(session: Session, now: datetime, stale_before: datetime) -> list[Expired]:
    """Mark due messages dead whose deadline was before `stale_before` (leased ones are left
    to their worker)."""
    inner = aliased(HookMessageRow)
    late = (
        select(inner.id)
        .where(
            inner.status == PENDING,
            inner.next_attempt_at <= now,
            inner.deadline_at < stale_before,
        )
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(HookMessageRow)
        .where(HookMessageRow.id.in_(late), HookMessageRow.status == PENDING)
        .values(status=DEAD, last_error=EXPIRED)
        .returning(HookMessageRow.message_id, HookMessageRow.event, HookMessageRow.subscription_id)
        .execution_options(synchronize_session=False)
    ).tuples()
    return [Expired(message_id, event, sub) for message_id, event, sub in rows]


def _within_caps(
    leased: list[tuple[int, int]], busy: Mapping[int, int], cap: int
) -> tuple[list[int], list[int]]:
    """Split leased (id, subscription) pairs into those with a free slot and the rest."""
    used: Counter[int] = Counter(busy)
    kept, extra = [], []
    for message, sub in sorted(leased):
        if used[sub] < cap:
            used[sub] += 1
            kept.append(message)
        else:
            extra.append(message)
    return kept, extra


def _claims(session: Session, ids: list[int]) -> list[Claim]:
    if not ids:
        return []
    rows = session.execute(
        select(HookMessageRow, HookSubscriptionRow.url, HookSubscriptionRow.secret)
        .join(HookSubscriptionRow, HookSubscriptionRow.id == HookMessageRow.subscription_id)
        .where(HookMessageRow.id.in_(ids))
        .order_by(HookMessageRow.id)
    ).all()
    return [
        Claim(
            id=message.id,
            message_id=message.message_id,
            subscription_id=message.subscription_id,
            event=message.event,
            body=message.body,
            url=url,
            secret=secret,
            attempts=message.attempts,
            created_at=message.created_at,
            deadline_at=message.deadline_at,
        )
        for message, url, secret in rows
    ]
