"""Two gateway replicas on one registry follow each other's rollout commands: on PostgreSQL
within a second although the registry poll is a minute (LISTEN/NOTIFY), on SQLite within
its (here short) change-counter poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.processes import postgres_database
from gateway.testing.server import app_client

PIRATE = "/admin/rollouts/pirate"
PLAN = {"canary": [{"weight": 100}]}
# On PostgreSQL only a notification can explain following within FOLLOW_S; on SQLite the
# counter is read every 0.1 s here.
POLL_S = {"postgresql": 60.0, "sqlite": 0.1}
FOLLOW_S = 1.0


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    """Settings two replicas share: one registry database, a poll only SQLite relies on."""
    kind = request.param
    update: dict[str, object] = {"registry_poll_s": POLL_S[kind]}
    if kind == "sqlite":
        yield settings.model_copy(update=update)
        return
    with postgres_database("gw_replicas") as url:
        yield settings.model_copy(update={**update, "database_url": url})


async def variant_of(client: httpx.AsyncClient) -> str | None:
    body = {"model": "pirate", "user": "anyone", "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers.get("x-variant")


async def seconds_until(
    client: httpx.AsyncClient, variant: str | None, within_s: float = FOLLOW_S
) -> float:
    """How long until `client`'s replica serves `variant` (fails after `within_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await variant_of(client) == variant:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"the other replica did not serve {variant!r} within {within_s} s")


async def test_a_rollback_on_one_replica_reaches_the_other_within_a_second(
    shared: Settings, fake_state: FakeEngineState
) -> None:
    async with (
        app_client(shared, Metrics(), TINY_BASE) as first,
        app_client(shared, Metrics(), TINY_BASE) as second,
    ):
        started = await first.post(
            "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN}
        )
        assert started.status_code == 201, started.text
        advanced = await first.post(f"{PIRATE}/advance")
        assert advanced.status_code == 200, advanced.text
        # The second replica warms the candidate up itself (retried every rollout tick), then
        # puts everyone on the canary.
        await seconds_until(second, "canary", within_s=5.0)
        assert (await second.get(PIRATE)).json()["warm_here"] is True

        rolled = await first.post(f"{PIRATE}/rollback", json={"reason": "bad"})
        assert rolled.status_code == 200, rolled.text
        assert await variant_of(first) is None
        await seconds_until(second, None)
        before = sum(r["model"] == "pirate--v2" for r in fake_state.received)
        assert [await variant_of(second) for _ in range(5)] == [None] * 5
        assert sum(r["model"] == "pirate--v2" for r in fake_state.received) == before


async def test_a_promotion_on_one_replica_moves_the_other_to_the_new_stable_version(
    shared: Settings,
) -> None:
    async with (
        app_client(shared, Metrics(), TINY_BASE) as first,
        app_client(shared, Metrics(), TINY_BASE) as second,
    ):
        body = {"route": "pirate", "version": 2, "plan": PLAN}
        assert (await first.post("/admin/rollouts", json=body)).status_code == 201
        assert (await first.post(f"{PIRATE}/advance")).status_code == 200
        await seconds_until(second, "canary", within_s=5.0)
        assert (await first.post(f"{PIRATE}/promote")).status_code == 200
        await seconds_until(second, None)
        # The rollout's end and the new stable version arrive together: never back to v1.
        body = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}]}
        served = [
            (await second.post("/v1/chat/completions", json=body)).headers["x-adapter"]
            for _ in range(5)
        ]
        assert served == ["pirate@2"] * 5
