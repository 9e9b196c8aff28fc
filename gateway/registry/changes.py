"""Knowing when the registry changed, at no cost to the request path.

Every change to the registry writes an audit event in the transaction that makes it, so the
newest audit event's id is a change counter. How a gateway replica learns it moved:

- PostgreSQL: a trigger on `audit_events` NOTIFYs `lora_gateway_registry` when such a
  transaction commits (migration 0005); one connection per process LISTENs and wakes the
  follower within milliseconds. The counter is still read every `poll_s` as a safety net
  (a notification lost while that connection was being re-made, say).
- SQLite: no push channel; the counter (one indexed `max(id)`) is read every `poll_s`.

A part that recorded a change itself (the pool's load hooks marking a version failed)
*requests* a refresh instead of running one: the follower wakes up and refreshes every part
in order, outside any lock the caller holds.

A part that takes its own changes into its in-memory view at once (`LocalChanges`) reads
the registry for a refresh through `LocalChanges.read`: a read that began before such a
change is done again, so a refresh never puts back the state the change replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.background.tasks import cancel_and_wait
from gateway.registry.schema import AuditEvent

log = logging.getLogger(__name__)

CHANNEL = "lora_gateway_registry"
_RECONNECT_S = (0.5, 1.0, 2.0, 5.0, 10.0)
Refresh = Callable[[], Awaitable[None]]
T = TypeVar("T")
# Reads a refresh tries before it takes the last one (local changes are rare: one retry is
# the most ever seen).
READS = 3


class LocalChanges:
    """Counts the changes a part made to its own view without a refresh."""

    def __init__(self) -> None:
        self._count = 0

    def note(self) -> None:
        """A change was taken into the view here (call it before publishing the view)."""
        self._count += 1

    async def read(self, query: Callable[[], T]) -> T:
        """`query()` in a worker thread, again if a local change landed while it ran."""
        for _ in range(READS - 1):
            seen = self._count
            rows = await asyncio.to_thread(query)
            if self._count == seen:
                return rows
        return await asyncio.to_thread(query)


class ChangeFeed:
    """Wakes the registry follower when the registry changed or a refresh was requested."""

    def __init__(self, engine: Engine, *, poll_s: float) -> None:
        self._engine = engine
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._seen = -1
        self._listener: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        # Set while the LISTEN connection is up (PostgreSQL only): tests and logs read it.
        self.listening = asyncio.Event()

    @property
    def pushes(self) -> bool:
        """Whether the database pushes changes (PostgreSQL) rather than being polled."""
        return self._engine.dialect.name == "postgresql"

    def describe(self) -> dict[str, object]:
        """How changes arrive here: `notify` (and whether LISTEN is up) or `poll`."""
        if self.pushes:
            return {
                "changes": "notify",
                "listening": self.listening.is_set(),
                "poll_s": self.poll_s,
            }
        return {"changes": "poll", "poll_s": self.poll_s}

    def counter(self) -> int:
        """The registry's change counter: the newest audit event's id (0: none yet)."""
        with self._engine.connect() as connection:
            return connection.execute(select(func.max(AuditEvent.id))).scalar() or 0

    def request(self) -> None:
        """Ask the follower to refresh every part soon (it never runs in the caller)."""
        self._wake.set()

    async def changed(self) -> None:
        """Return once the counter moved since the last return, or a refresh was requested."""
        while True:
            # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` can swallow a
            # cancellation that arrives as the event is set, and `stop` would wait forever.
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
                requested = True
            except TimeoutError:
                requested = False
            self._wake.clear()
            try:
                counter = await asyncio.to_thread(self.counter)
            except SQLAlchemyError as exc:
                # The database is away: keep the last snapshot, look again at the next poll.
                log.warning("reading the registry's change counter failed: %s", exc)
                continue
            if requested or counter != self._seen:
                self._seen = counter
                return

    async def start(self, *refreshes: Refresh) -> None:
        """Run `refreshes` in this order after every change (and LISTEN on PostgreSQL).

        The first look always refreshes: a change made between the parts' own start-up reads
        and this call is not missed."""
        self._seen = -1
        if self.pushes:
            self._listener = asyncio.create_task(self._listen(), name="registry-listen")
        self._follower = asyncio.create_task(self._follow(refreshes), name="registry-follow")

    async def stop(self) -> None:
        """Stop following and listening."""
        await cancel_and_wait(self._follower)
        await cancel_and_wait(self._listener)
        self._follower = self._listener = None

    async def _follow(self, refreshes: tuple[Refresh, ...]) -> None:
        while True:
            await self.changed()
            for refresh in refreshes:
                try:
                    await refresh()
                except Exception:
                    # The last snapshot keeps serving; the next change or poll tries again.
                    log.exception("refreshing after a registry change failed")

    async def _listen(self) -> None:
        import psycopg

        conninfo = self._engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    failures = 0
                    # Changes made while no connection listened were not pushed: look now.
                    self._wake.set()
                    async for _ in connection.notifies():
                        self._wake.set()
            except (psycopg.Error, OSError) as exc:
                log.warning("listening for registry changes failed (polling meanwhile): %s", exc)
            self.listening.clear()
            await asyncio.sleep(_RECONNECT_S[min(failures, len(_RECONNECT_S) - 1)])
            failures += 1
