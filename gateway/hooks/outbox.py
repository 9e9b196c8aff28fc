"""The outbox: webhook messages written in the same transaction as the change they announce.

A state change (a rollout promoted, say) and its messages commit together or not at all:
`Outbox.enqueue` adds one `HookMessageRow` per interested subscription to the caller's open
session and neither commits nor flushes it. Once that transaction commits, the messages
are durable and the delivery worker (`gateway.hooks.delivery`) sends them at least once,
from this replica or any other; a rolled-back change sends nothing. A process that dies
between the commit and the send loses nothing: the rows are still `pending`.

Each message has its own `message_id` (`msg_` and a ULID-like 26-character id, sortable by
time), sent as `webhook-id` on every attempt so receivers drop duplicates, and a deadline
(`deadline_s` after it was written) after which it is given up on (`dead`).

Removing a subscription deactivates it rather than deleting it: its delivery history stays
readable (`messages`), it gets no new messages, its pending ones are marked dead (nobody is
meant to receive them any more) and its secret is erased, since nothing will sign with it.
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import Conflict, InvalidRequest, RouteNotFound
from gateway.hooks.events import EVENT_NAMES, HookEvent, body_of, event_of
from gateway.hooks.signing import new_secret, secret_problem
from gateway.hooks.urls import OwnAddress, url_problems
from gateway.registry.schema import HookAttemptRow, HookMessageRow, HookSubscriptionRow, utcnow

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
MAX_EVENTS = 20
MAX_DESCRIPTION = 1024
REMOVED = "subscription removed"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_message_id() -> str:
    """`msg_` + 26 characters: 48 bits of milliseconds and 80 random bits, base32 (ULID)."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "msg_" + "".join(reversed(chars))


@dataclass(frozen=True)
class MessageView:
    """A message with its attempts, oldest attempt first."""

    message: HookMessageRow
    attempts: list[HookAttemptRow]


@dataclass(frozen=True)
class OutboxStats:
    """Messages waiting for delivery, and given up on."""

    pending: int
    dead: int


class Outbox:
    """Writes webhook messages into callers' transactions; keeps the subscriptions."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        deadline_s: float = 86_400.0,
        own_addresses: Collection[OwnAddress] = (),
    ) -> None:
        self._sessions = sessions
        self._deadline = timedelta(seconds=deadline_s)
        self._own = tuple(own_addresses)
        self._committed: builtins.list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the committing thread) after a transaction with new
        messages commits: the delivery worker's `wake`."""
        self._committed.append(callback)

    # -- messages --------------------------------------------------------------------------

    def enqueue(
        self, session: Session, event: HookEvent | str, data: dict[str, Any]
    ) -> builtins.list[HookMessageRow]:
        """Add a message for `event` for every active subscription that wants it to the
        caller's open transaction (no commit, no flush); one query when nobody does."""
        kind = event_of(event)
        # Autoflush would write the caller's own pending changes early.
        with session.no_autoflush:
            wanted = session.execute(
                select(HookSubscriptionRow.id, HookSubscriptionRow.events).where(
                    HookSubscriptionRow.active.is_(True)
                )
            ).all()
        targets = [sub_id for sub_id, events in wanted if not events or kind.value in events]
        if not targets:
            return []
        now = utcnow()
        body = body_of(kind, data, now)
        rows = [self._message(sub_id, kind, body, now, now) for sub_id in targets]
        session.add_all(rows)
        self._notify(session)
        return rows

    def send_test(self, subscription_id: int, *, hold_s: float) -> HookMessageRow:
        """Write a `hook.test` message for one subscription, held back from the delivery
        worker for `hold_s` so that the caller delivers it (`HookDelivery.deliver_now`)."""
        with self._sessions.begin() as session:
            sub = _subscription(session, subscription_id)
            if not sub.active:
                raise Conflict(f"webhook subscription {subscription_id} was removed", param="id")
            now = utcnow()
            data = {"subscription_id": sub.id, "message": "a test message from the gateway"}
            body = body_of(HookEvent.HOOK_TEST, data, now)
            hold = now + timedelta(seconds=hold_s)
            row = self._message(sub.id, HookEvent.HOOK_TEST, body, now, hold)
            session.add(row)
            return row

    def _message(
        self, sub_id: int, kind: HookEvent, body: str, now: datetime, due: datetime
    ) -> HookMessageRow:
        return HookMessageRow(
            subscription_id=sub_id,
            message_id=new_message_id(),
            event=kind.value,
            body=body,
            status=PENDING,
            attempts=0,
            next_attempt_at=due,
            deadline_at=now + self._deadline,
            created_at=now,
        )

    def _notify(self, session: Session) -> None:
        if not self._committed:
            return

        def committed(_session: Session) -> None:
            for callback in self._committed:
                callback()

        orm_event.listen(session, "after_commit", committed, once=True)

    # -- subscriptions ---------------------------------------------------------------------

    def create(
        self,
        url: str,
        events: Sequence[str],
        description: str,
        actor: str,
        secret: str | None = None,
    ) -> tuple[HookSubscriptionRow, str]:
        """Subscribe `url` to `events` (empty: every event); the row and its secret (the
        one given, or a new one). One InvalidRequest lists every problem; nothing is kept."""
        own = self._own
        problems = [("url", "invalid_hook_url", p) for p in url_problems(url, own_addresses=own)]
        unknown = sorted({name for name in events if name not in EVENT_NAMES})
        if unknown:
            known = ", ".join(EVENT_NAMES)
            problem = f"unknown events {', '.join(unknown)}; known events: {known}"
            problems.append(("events", "unknown_event", problem))
        if len(events) > MAX_EVENTS:
            problems.append(("events", "invalid_events", f"at most {MAX_EVENTS} events"))
        if len(description) > MAX_DESCRIPTION:
            problems.append(
                ("description", "invalid_description", f"at most {MAX_DESCRIPTION} characters")
            )
        if secret is not None and (wrong := secret_problem(secret)) is not None:
            problems.append(("secret", "invalid_secret", wrong))
        if problems:
            param, code, _ = problems[0]
            raise InvalidRequest("; ".join(p for _, _, p in problems), param=param, code=code)
        secret = secret or new_secret()
        row = HookSubscriptionRow(
            url=url,
            secret=secret,
            events=list(dict.fromkeys(events)),
            description=description,
            active=True,
            created_by=actor[:128],
        )
        with self._sessions.begin() as session:
            session.add(row)
        return row, secret

    def get(self, subscription_id: int) -> HookSubscriptionRow:
        """One subscription, active or removed; not found as a 404."""
        with self._sessions() as session:
            return _subscription(session, subscription_id)

    def delete(self, subscription_id: int) -> HookSubscriptionRow:
        """Deactivate a subscription (see the module docstring); a removed one stays so."""
        with self._sessions.begin() as session:
            sub = _subscription(session, subscription_id)
            if sub.active:
                sub.active = False
                sub.secret = ""
                session.execute(
                    update(HookMessageRow)
                    .where(
                        HookMessageRow.subscription_id == sub.id, HookMessageRow.status == PENDING
                    )
                    .values(status=DEAD, last_error=REMOVED)
                )
            return sub

    def messages(
        self, subscription_id: int, status: str | None = None, limit: int = 50
    ) -> builtins.list[MessageView]:
        """A subscription's newest messages (of one status, or all) with their attempts."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
        with self._sessions() as session:
            _subscription(session, subscription_id)
            query = select(HookMessageRow).where(HookMessageRow.subscription_id == subscription_id)
            if status is not None:
                query = query.where(HookMessageRow.status == status)
            rows = session.scalars(query.order_by(HookMessageRow.id.desc()).limit(limit)).all()
            attempts: dict[int, builtins.list[HookAttemptRow]] = {row.id: [] for row in rows}
            if rows:
                for attempt in session.scalars(
                    select(HookAttemptRow)
                    .where(HookAttemptRow.message_id.in_(attempts))
                    .order_by(HookAttemptRow.id)
                ):
                    attempts[attempt.message_id].append(attempt)
            return [MessageView(row, attempts[row.id]) for row in rows]

    def stats(self) -> OutboxStats:
        """How many messages are pending and dead (for the gauges)."""
        return outbox_stats(self._sessions)

    def list(self, *, include_removed: bool = False) -> builtins.list[HookSubscriptionRow]:
        """The subscriptions, oldest first (the removed ones too on request)."""
        with self._sessions() as session:
            query = select(HookSubscriptionRow).order_by(HookSubscriptionRow.id)
            if not include_removed:
                query = query.where(HookSubscriptionRow.active.is_(True))
            return builtins.list(session.scalars(query))


def outbox_stats(sessions: sessionmaker[Session]) -> OutboxStats:
    """How many messages are pending and dead: one grouped count on the indexed status."""
    with sessions() as session:
        rows = session.execute(
            select(HookMessageRow.status, func.count())
            .where(HookMessageRow.status.in_((PENDING, DEAD)))
            .group_by(HookMessageRow.status)
        ).tuples()
        counts = {status: count for status, count in rows}
    return OutboxStats(pending=counts.get(PENDING, 0), dead=counts.get(DEAD, 0))


def _subscription(session: Session, subscription_id: int) -> HookSubscriptionRow:
    sub = session.get(HookSubscriptionRow, subscription_id)
    if sub is None:
        raise RouteNotFound(
            f"No webhook subscription {subscription_id}.", param="id", code="hook_not_found"
        )
    return sub
