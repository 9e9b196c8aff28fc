"""The change feed: a committed change wakes the follower, nothing else does; PostgreSQL
pushes it (LISTEN/NOTIFY from the committing transaction), SQLite is polled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.registry import database
from gateway.registry.changes import ChangeFeed
from gateway.registry.schema import AuditEvent
from gateway.registry.store import Registry
from gateway.testing.processes import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        made = database.make_engine(url)
        database.upgrade(made)
        yield made
        made.dispose()
        return
    with postgres_database("gw_changes") as url:
        made = database.make_engine(url)
        database.upgrade(made)
        yield made
        made.dispose()


@pytest.fixture
def registry(engine: Engine) -> Registry:
    # Another replica's writes: its own connection pool on the same database.
    other = database.make_engine(str(engine.url.render_as_string(hide_password=False)))
    return Registry(database.session_factory(other))


@dataclass
class Followed:
    """A running feed and the times its follower woke up."""

    changes: ChangeFeed
    woken: list[float] = field(default_factory=list)

    async def woke(self) -> None:
        self.woken.append(time.monotonic())

    async def wakes_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.woken:
                return True
            await asyncio.sleep(0.01)
        return False


@contextlib.asynccontextmanager
async def following(engine: Engine, poll_s: float) -> AsyncIterator[Followed]:
    """A started feed whose first wake-up (LISTEN connected, or the first poll) is over."""
    followed = Followed(ChangeFeed(engine, poll_s=poll_s))
    await followed.changes.start(followed.woke)
    try:
        if followed.changes.pushes:
            await asyncio.wait_for(followed.changes.listening.wait(), 5)
        await asyncio.sleep(0.3)
        followed.woken.clear()
        yield followed
    finally:
        await followed.changes.stop()


@pytest.fixture
async def feed(engine: Engine) -> AsyncIterator[Followed]:
    # SQLite is polled quickly; PostgreSQL's poll is a minute, so only a push is fast.
    poll_s = 60.0 if engine.dialect.name == "postgresql" else 0.05
    async with following(engine, poll_s) as followed:
        yield followed


async def test_a_committed_change_elsewhere_wakes_the_follower_within_a_second(
    feed: Followed, registry: Registry
) -> None:
    await asyncio.to_thread(registry.record_refusal, "x", "why", {}, actor="other replica")

    assert await feed.wakes_within(1.0)


async def test_nothing_wakes_the_follower_while_nothing_changes(feed: Followed) -> None:
    assert not await feed.wakes_within(0.5)


async def test_a_requested_refresh_wakes_the_follower_at_once(feed: Followed) -> None:
    feed.changes.request()

    assert await feed.wakes_within(0.2)


async def test_the_counter_is_the_newest_audit_event(feed: Followed, registry: Registry) -> None:
    before = feed.changes.counter()
    registry.record_refusal("x", "why", {}, actor="t")
    registry.record_refusal("y", "why", {}, actor="t")

    assert feed.changes.counter() == before + 2 == registry.last_event_id()


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_postgresql_notifies_only_when_the_transaction_commits(
    feed: Followed, engine: Engine
) -> None:
    sessions = database.session_factory(engine)

    def rolled_back() -> None:
        with sessions() as session:
            session.add(AuditEvent(actor="t", action="x", adapter="", reason=""))
            session.flush()
            session.rollback()

    await asyncio.to_thread(rolled_back)
    assert not await feed.wakes_within(0.5)

    await asyncio.to_thread(Registry(sessions).record_refusal, "x", "why", {}, actor="t")
    assert await feed.wakes_within(0.5)
