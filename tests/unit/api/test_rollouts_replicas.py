"""Two gateway replicas on one registry follow each other's rollout commands within the
rollout tick (`GATEWAY_ROLLOUT__FLUSH_S`), not at the slower registry poll."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.config import RolloutSettings, Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.server import app_client

PIRATE = "/admin/rollouts/pirate"
PLAN = {"canary": [{"weight": 100}]}


async def variant_of(client: httpx.AsyncClient) -> str | None:
    body = {"model": "pirate", "user": "anyone", "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers.get("x-variant")


async def seconds_until(client: httpx.AsyncClient, variant: str | None) -> float:
    """How long until `client`'s replica serves `variant` (fails after 5 s)."""
    started = time.monotonic()
    while time.monotonic() - started < 5:
        if await variant_of(client) == variant:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"the other replica did not serve {variant!r} within 5 s")


async def test_a_rollback_on_one_replica_reaches_the_other_within_the_rollout_tick(
    settings: Settings, fake_state: FakeEngineState
) -> None:
    # The registry poll alone would take a minute: only the rollout tick can explain 5 s.
    shared = settings.model_copy(
        update={"registry_poll_s": 60.0, "rollout": RolloutSettings(flush_s=0.1)}
    )
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
        # The second replica warms the candidate up itself, then puts everyone on the canary.
        await seconds_until(second, "canary")
        assert (await second.get(PIRATE)).json()["warm_here"] is True

        rolled = await first.post(f"{PIRATE}/rollback", json={"reason": "bad"})
        assert rolled.status_code == 200, rolled.text
        assert await variant_of(first) is None
        await seconds_until(second, None)
        before = sum(r["model"] == "pirate--v2" for r in fake_state.received)
        assert [await variant_of(second) for _ in range(5)] == [None] * 5
        assert sum(r["model"] == "pirate--v2" for r in fake_state.received) == before


async def test_a_promotion_on_one_replica_moves_the_other_to_the_new_stable_version(
    settings: Settings,
) -> None:
    shared = settings.model_copy(
        update={"registry_poll_s": 60.0, "rollout": RolloutSettings(flush_s=0.1)}
    )
    async with (
        app_client(shared, Metrics(), TINY_BASE) as first,
        app_client(shared, Metrics(), TINY_BASE) as second,
    ):
        body = {"route": "pirate", "version": 2, "plan": PLAN}
        assert (await first.post("/admin/rollouts", json=body)).status_code == 201
        assert (await first.post(f"{PIRATE}/advance")).status_code == 200
        await seconds_until(second, "canary")
        assert (await first.post(f"{PIRATE}/promote")).status_code == 200
        await seconds_until(second, None)
        # The rollout's end and the new stable version arrive together: never back to v1.
        body = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}]}
        served = [
            (await second.post("/v1/chat/completions", json=body)).headers["x-adapter"]
            for _ in range(5)
        ]
        assert served == ["pirate@2"] * 5
