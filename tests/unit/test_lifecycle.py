"""Refreshes go one way: what runs a snapshot rebuild, and what only asks for one.

Through the whole gateway against the fake vLLM. A spy on `AdapterLifecycle.refresh`
records every rebuild and whether a replica's residency lock was held when it ran; a spy on
`RolloutManager.refresh` shows that nothing below the manager calls it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE, write_adapter
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.held import HeldFirstCall
from gateway.testing.server import serve_in_loop


@dataclass
class Spy:
    """Calls of one coroutine method, with whether any residency lock was held at each."""

    under_lock: list[bool] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.under_lock)


def spy_on(app: FastAPI, owner: Any, method: str) -> Spy:
    """Record calls of `owner.method()` (a coroutine method) made through the instance."""
    spy = Spy()
    original: Callable[[], Awaitable[None]] = getattr(owner, method)

    async def recorded() -> None:
        spy.under_lock.append(any(r.residency.changing for r in app.state.pool.replicas))
        await original()

    setattr(owner, method, recorded)
    return spy


def spy_on_rebuilds(app: FastAPI) -> Spy:
    """Record every snapshot rebuild, whoever runs it: each reads the servable versions."""
    spy = Spy()
    registry = app.state.lifecycle._registry
    original = registry.servable

    def recorded() -> Any:
        spy.under_lock.append(any(r.residency.changing for r in app.state.pool.replicas))
        return original()

    registry.servable = recorded
    return spy


@dataclass
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    engine: FakeEngineState

    async def chat(self, model: str, user: str = "u") -> httpx.Response:
        body = {"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]}
        return await self.client.post("/v1/chat/completions", json=body)

    async def models(self) -> set[str]:
        return {m["id"] for m in (await self.client.get("/v1/models")).json()["data"]}


@pytest.fixture
def poll_s() -> float:
    """A poll far beyond any test: only a requested refresh can explain a quick one."""
    return 60.0


@pytest.fixture
async def running(tmp_path: Path, poll_s: float) -> AsyncIterator[Running]:
    for version in (1, 2):
        write_adapter(tmp_path / "adapters" / "pirate" / f"v{version}", fill=float(version))
    engine = FakeEngineState(base_model="smollm2")
    async with serve_in_loop(create_fake_vllm(engine)) as url:
        settings = Settings(
            base_model_name="smollm2",
            upstream_urls=[url],
            adapter_root=tmp_path / "adapters",
            state_dir=tmp_path / "state",
            registry_poll_s=poll_s,
        )
        app = create_app(settings, metrics=Metrics(), base_info=TINY_BASE)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield Running(app, client, engine)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time allowed")


async def test_a_refused_load_asks_for_a_refresh_and_never_runs_one_under_the_residency_lock(
    running: Running,
) -> None:
    refreshes = spy_on_rebuilds(running.app)
    running.engine.load_status = 500

    refused = await running.chat("pirate@2")

    assert refused.status_code == 502, refused.text
    assert refused.json()["error"]["code"] == "adapter_load_failed"
    # Out of the catalogue at once, although no refresh ran on the request's way.
    assert "pirate@2" not in await running.models()
    # The follower ran the refresh the hook asked for (the poll is a minute away).
    await until(lambda: refreshes.calls >= 1)
    assert refreshes.under_lock and not any(refreshes.under_lock)
    version = (await running.client.get("/admin/adapters/pirate/versions/2")).json()
    assert version["state"] == "failed"


async def test_an_explicit_load_with_a_pin_refreshes_once(running: Running) -> None:
    refreshes = spy_on(running.app, running.app.state.lifecycle, "refresh")
    follower = running.app.state.changes
    # Keep the follower out of the count: only the load's own rebuilds are measured.
    await follower.stop()

    loaded = await running.client.post("/admin/adapters/pirate/versions/2/load", json={"pin": True})

    assert loaded.status_code == 200, loaded.text
    assert (loaded.json()["state"], loaded.json()["pinned"]) == ("ready", True)
    assert "pirate--v2" in running.engine.loras
    assert refreshes.calls == 1 and refreshes.under_lock == [False]
    assert all("pirate--v2" in r.residency.pinned for r in running.app.state.pool.replicas)


async def test_rollout_commands_refresh_the_catalogue_only_when_the_stable_version_moves(
    running: Running,
) -> None:
    app = running.app
    plan = {"shadow": {"sample_rate": 0.0}, "canary": [{"weight": 100}]}
    body = {"route": "pirate", "version": 2, "plan": plan}
    assert (await running.client.post("/admin/rollouts", json=body)).status_code == 201
    await app.state.changes.stop()
    lifecycle_refreshes = spy_on(app, app.state.lifecycle, "refresh")
    manager_refreshes = spy_on(app, app.state.rollouts, "refresh")

    for command in ("pause", "resume", "advance"):
        answer = await running.client.post(f"/admin/rollouts/pirate/{command}")
        assert answer.status_code == 200, answer.text
    # The command's own row is the live view at once: the canary serves the candidate.
    assert (await running.chat("pirate")).headers["x-adapter"] == "pirate@2"
    assert lifecycle_refreshes.calls == 0

    promoted = await running.client.post("/admin/rollouts/pirate/promote")

    assert promoted.status_code == 200, promoted.text
    assert lifecycle_refreshes.calls == 1
    assert manager_refreshes.calls == 0
    answer = await running.chat("pirate")
    assert (answer.headers["x-adapter"], answer.headers.get("x-variant")) == ("pirate@2", None)


@pytest.mark.parametrize("poll_s", [0.05])
async def test_a_gateway_serving_without_changes_only_reads_the_change_counter(
    running: Running,
) -> None:
    """Serving reads nothing per request: the only statements are the follower's change
    counter and the webhook worker's look for due messages (both timers, both indexed)."""
    from sqlalchemy import Engine, event

    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    # The first request loads the version on demand (a recorded change): settle that first.
    assert (await running.chat("pirate")).status_code == 200
    await asyncio.sleep(0.3)
    event.listen(Engine, "before_cursor_execute", record)
    try:
        for _ in range(20):
            assert (await running.chat("pirate")).status_code == 200
        await asyncio.sleep(0.5)
    finally:
        event.remove(Engine, "before_cursor_execute", record)

    assert len(statements) >= 5
    assert set(statements) <= {
        "SELECT max(audit_events.id) AS max_1 FROM audit_events",
        "SELECT hook_outbox.id FROM hook_outbox WHERE hook_outbox.status = ? AND "
        "hook_outbox.next_attempt_at <= ? LIMIT ? OFFSET ?",
    }
    assert "SELECT max(audit_events.id) AS max_1 FROM audit_events" in statements


async def test_a_refresh_that_read_before_a_refused_load_does_not_bring_the_version_back(
    running: Running,
) -> None:
    """A refresh reads the registry, a load is refused and the version marked failed while
    it reads, then the refresh publishes: the failed version must stay out of the catalogue."""
    lifecycle = running.app.state.lifecycle
    registry = lifecycle._registry
    held = HeldFirstCall(registry.servable)
    registry.servable = held
    # Only the refresh under test runs: the one the refused load asks for is not started.
    lifecycle._changes.request = lambda: None
    refresh = asyncio.create_task(lifecycle.refresh())
    await held.started()
    running.engine.load_status = 500
    refused = await running.chat("pirate@2")
    assert refused.status_code == 502, refused.text
    assert "pirate@2" not in await running.models()
    held.release()
    await refresh
    # The stale first read was not published: the refresh read again.
    assert held.calls == 2
    assert "pirate@2" not in await running.models()
    assert "pirate@1" in await running.models()
