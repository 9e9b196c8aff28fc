"""The registry's databases (SQLite and PostgreSQL, from the registry tests), brought up to
date, a loopback webhook receiver, and delivery workers with small timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import HookSettings
from gateway.hooks.delivery import HookDelivery
from gateway.hooks.outbox import Outbox
from gateway.metrics import Metrics
from gateway.registry import database
from gateway.testing.receiver import WebhookReceiver
from gateway.testing.server import serve_in_loop

from ..registry.conftest import engine  # noqa: F401  (the fixture, on both databases)

# Timings of the tests' workers: quick polls, short attempts, back-off in tenths of seconds.
FAST = HookSettings(poll_s=0.05, attempt_timeout_s=1.0, max_backoff_s=0.2)


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    database.upgrade(engine)
    yield database.session_factory(engine)


@pytest.fixture
def outbox(sessions: sessionmaker[Session]) -> Outbox:
    return Outbox(sessions)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    app = WebhookReceiver()
    async with serve_in_loop(app) as url:
        yield app, url


Workers = Callable[..., Awaitable[HookDelivery]]


@pytest.fixture
async def workers(sessions: sessionmaker[Session]) -> AsyncIterator[Workers]:
    """Start delivery workers on the test's database; all stopped at the end."""
    started: list[tuple[HookDelivery, httpx.AsyncClient]] = []

    async def start(
        settings: HookSettings = FAST, metrics: Metrics | None = None, **kwargs: object
    ) -> HookDelivery:
        client = httpx.AsyncClient(follow_redirects=False)
        kwargs.setdefault("backoff_base_s", 0.05)
        worker = HookDelivery(sessions, metrics or Metrics(), client, settings, **kwargs)  # type: ignore[arg-type]
        await worker.start()
        started.append((worker, client))
        return worker

    yield start
    for worker, client in started:
        await worker.stop()
        await client.aclose()


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> float:
    """Wait until `check()` holds; how long it took (fails after `within_s`)."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within_s:
            raise AssertionError(f"not within {within_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - began
