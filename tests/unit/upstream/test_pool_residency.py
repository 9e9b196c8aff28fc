"""Adapter residency through the whole gateway, against the fake vLLM on a loopback socket.

The fake engine's `loras` and `load_calls` are what vLLM would hold and what it was asked
to load, so each test checks the engine's side, not only the gateway's own record.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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
from gateway.testing.server import serve_in_loop
from gateway.upstream.pool import UpstreamPool

NAMES = ("a", "b", "c", "d")


@dataclass
class Gateway:
    """A running gateway app, a client for it and its metrics."""

    app: FastAPI
    client: httpx.AsyncClient
    metrics: Metrics
    upstream: str

    @property
    def pool(self) -> UpstreamPool:
        pool: UpstreamPool = self.app.state.pool
        return pool

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample for this gateway's one upstream (0 when never recorded)."""
        value = self.metrics.registry.get_sample_value(name, {"upstream": self.upstream, **labels})
        return value or 0.0

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return await self.client.post("/v1/chat/completions", json=body)

    async def admin(self, name: str, action: str, body: dict[str, Any] | None = None) -> None:
        response = await self.client.post(
            f"/admin/adapters/{name}/versions/1/{action}", json=body or {}
        )
        assert response.status_code == 200, response.text


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    """Start a gateway (its lifespan too) and stop it on exit."""
    metrics = Metrics()
    app = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(app, client, metrics, settings.upstreams[0])


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until `condition()` holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def engine_name(name: str) -> str:
    return f"{name}--v1"


def held(engine: FakeEngineState) -> set[str]:
    """The adapter versions the fake engine holds, as adapter names."""
    return {n.removesuffix("--v1") for n in engine.loras}


def assert_openai_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    for fill, name in enumerate(NAMES, start=1):
        write_adapter(root / name / "v1", fill=float(fill))
    return root


@pytest.fixture
def engine() -> FakeEngineState:
    return FakeEngineState(base_model="smollm2")


@pytest.fixture
async def engine_url(engine: FakeEngineState) -> AsyncIterator[str]:
    async with serve_in_loop(create_fake_vllm(engine)) as url:
        yield url


@pytest.fixture
def settings(engine_url: str, adapter_root: Path, tmp_path: Path) -> Settings:
    return Settings(
        base_model_name="smollm2",
        upstream_urls=[engine_url],
        adapter_root=adapter_root,
        state_dir=tmp_path / "state",
        max_resident_adapters=2,
        health_interval_s=0.2,
        registry_poll_s=0.2,
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with running(settings) as gw:
        yield gw


async def serve(gw: Gateway, *names: str) -> None:
    """One successful chat request per name, in order."""
    for name in names:
        response = await gw.chat(name)
        assert response.status_code == 200, response.text


async def test_the_least_recently_used_version_is_evicted(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    await serve(gateway, "a", "b", "a", "c")

    assert held(engine) == {"a", "c"}
    assert engine.load_calls == {"a--v1": 1, "b--v1": 1, "c--v1": 1}
    assert gateway.sample("gateway_adapter_evictions_total") == 1
    assert gateway.sample("gateway_adapters_resident") == 2


async def test_a_pinned_version_is_never_evicted(gateway: Gateway, engine: FakeEngineState) -> None:
    await gateway.admin("a", "load", {"pin": True})

    for name in ("b", "c", "d"):
        await serve(gateway, name)
        assert held(engine) == {"a", name}

    assert engine.load_calls["a--v1"] == 1
    assert gateway.sample("gateway_adapter_evictions_total") == 2


async def test_with_every_slot_pinned_another_version_gets_503(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    await gateway.admin("a", "load", {"pin": True})
    await gateway.admin("b", "load", {"pin": True})

    response = await asyncio.wait_for(gateway.chat("c"), timeout=5.0)

    assert_openai_error(response, 503)
    assert held(engine) == {"a", "b"}
    assert "c--v1" not in engine.load_calls


async def test_concurrent_requests_for_a_missing_version_load_it_once(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    engine.load_delay_s = 0.3

    responses = await asyncio.gather(*(gateway.chat("a@1") for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert engine.load_calls == {"a--v1": 1}
    assert held(engine) == {"a"}


async def test_a_version_serving_a_stream_is_not_evicted(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    engine.stream_chunks, engine.chunk_delay_s = 4, 0.25
    streaming = asyncio.create_task(gateway.chat("a", stream=True))
    await eventually(lambda: gateway.pool.busy(engine_name("a")) == 1)

    # a is the least recently used, but busy: b makes room for c instead.
    await serve(gateway, "b", "c")
    assert held(engine) == {"a", "c"}
    assert not streaming.done()

    response = await asyncio.wait_for(streaming, timeout=5.0)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    # Done streaming, a is evictable again.
    await serve(gateway, "d")
    assert held(engine) == {"c", "d"}


async def test_a_version_being_evicted_is_loaded_again_not_served(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    await serve(gateway, "a", "b")
    engine.unload_delay_s = 0.3
    making_room = asyncio.create_task(serve(gateway, "c"))  # evicts a, slowly
    await eventually(lambda: engine.unload_calls[engine_name("a")] == 1)

    await serve(gateway, "a")
    await asyncio.wait_for(making_room, timeout=5.0)

    # a waited for its eviction to finish and came back in b's place.
    assert held(engine) == {"a", "c"}
    assert engine.load_calls[engine_name("a")] == 2
    assert set(gateway.pool.replicas[0].resident) == {"a--v1", "c--v1"}


async def test_an_engine_restart_gets_its_versions_back_without_a_request(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    await serve(gateway, "a", "b")
    replica = gateway.pool.replicas[0]

    engine.restart()
    await eventually(lambda: not replica.healthy)
    engine.healthy = True
    await eventually(lambda: held(engine) == {"a", "b"} and replica.healthy)

    assert engine.load_calls == {"a--v1": 2, "b--v1": 2}
    await serve(gateway, "a", "b")
    assert engine.load_calls == {"a--v1": 2, "b--v1": 2}


async def test_an_engine_restart_restores_the_others_when_one_version_cannot_load(
    gateway: Gateway, engine: FakeEngineState, adapter_root: Path
) -> None:
    await serve(gateway, "a", "b")
    shutil.rmtree(adapter_root / "a")
    replica = gateway.pool.replicas[0]

    engine.restart()
    await eventually(lambda: not replica.healthy)
    engine.healthy = True

    await eventually(lambda: replica.healthy and held(engine) == {"b"})
    await serve(gateway, "b")


async def test_a_restarted_gateway_adopts_what_the_engine_holds(
    settings: Settings, engine: FakeEngineState
) -> None:
    async with running(settings) as first:
        # c was loaded after a and b first were, but a and b are what the engine holds now.
        await serve(first, "a", "b", "c", "a", "b")
        await first.admin("d", "retire")
    # The engine still holds a version retired meanwhile (say, by another gateway replica).
    engine.loras[engine_name("d")] = "/stale/d/v1"
    loads = dict(engine.load_calls)

    async with running(settings) as second:
        assert set(second.pool.replicas[0].resident) == {"a--v1", "b--v1"}
        assert held(engine) == {"a", "b"}
        await serve(second, "a", "b")
        assert engine.load_calls == loads
        assert second.sample("gateway_adapters_resident") == 2


async def test_a_version_the_engine_lost_is_reloaded_and_the_request_retried(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    await serve(gateway, "a")

    del engine.loras[engine_name("a")]
    await serve(gateway, "a")

    assert engine.load_calls == {"a--v1": 2}
    assert held(engine) == {"a"}
    assert gateway.pool.replicas[0].healthy


async def test_a_load_the_engine_rejects_marks_the_version_failed(
    gateway: Gateway, engine: FakeEngineState
) -> None:
    engine.load_status = 500

    response = await asyncio.wait_for(gateway.chat("a"), timeout=5.0)

    assert_openai_error(response, 502)
    assert response.json()["error"]["code"] == "adapter_load_failed"
    adapter = (await gateway.client.get("/admin/adapters/a")).json()
    assert [v["state"] for v in adapter["versions"]] == ["failed"]
    models = {m["id"] for m in (await gateway.client.get("/v1/models")).json()["data"]}
    assert "a" not in models and "a@1" not in models
    assert gateway.sample("gateway_adapter_load_failures_total", reason="rejected") == 1
    assert engine.load_calls == {"a--v1": 1}
    assert held(engine) == set()


async def test_each_successful_load_is_timed(gateway: Gateway, engine: FakeEngineState) -> None:
    await serve(gateway, "a", "b", "a", "c", "b")

    assert sum(engine.load_calls.values()) == 4
    assert gateway.sample("gateway_adapter_load_duration_seconds_count") == 4
    assert gateway.sample("gateway_adapter_loads_total", outcome="ok") == 4
