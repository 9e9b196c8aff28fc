"""Two engine replicas behind one gateway: ejection, retries that never reach an engine
twice, re-admission by the health probe, and replicas found by DNS (fake engines on
loopback sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from gateway.testing.server import free_port, serve_in_loop
from gateway.upstream.discovery import DnsDiscovery, replica_url, resolve_all
from gateway.upstream.pool import UpstreamPool


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    metrics: Metrics

    @property
    def pool(self) -> UpstreamPool:
        pool: UpstreamPool = self.app.state.pool
        return pool

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def chat(self, model: str = "smollm2", **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return await self.client.post("/v1/chat/completions", json=body)

    async def upstreams(self) -> dict[str, dict[str, Any]]:
        response = await self.client.get("/admin/upstreams")
        assert response.status_code == 200, response.text
        return {u["url"]: u for u in response.json()["upstreams"]}


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    metrics = Metrics()
    app = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(app, client, metrics)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Engine:
    """A fake engine on a fixed port that can be stopped and started again."""

    def __init__(self) -> None:
        self.state = FakeEngineState(base_model="smollm2")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        await self._stack.enter_async_context(
            serve_in_loop(create_fake_vllm(self.state), self.port)
        )

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    def generations(self) -> int:
        return sum(self.state.generations.values())


@pytest.fixture
async def engines() -> AsyncIterator[tuple[Engine, Engine]]:
    a, b = Engine(), Engine()
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


def settings_for(tmp_path: Path, urls: list[str], **extra: Any) -> Settings:
    root = tmp_path / "adapters"
    write_adapter(root / "a" / "v1", fill=1.0)
    values: dict[str, Any] = {
        "base_model_name": "smollm2",
        "upstream_urls": urls,
        "adapter_root": root,
        "state_dir": tmp_path / "state",
        # No probe between two requests unless a failure asks for one.
        "health_interval_s": 60.0,
        "registry_poll_s": 0.2,
        **extra,
    }
    return Settings(**values)


async def test_a_refused_connection_is_sent_once_to_the_other_replica(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, b = engines
    async with running(settings_for(tmp_path, [a.url, b.url])) as gw:
        assert (await gw.chat()).status_code == 200
        assert a.generations() == 1  # ties go to the first replica
        await a.stop()

        response = await gw.chat()

        assert response.status_code == 200, response.text
        assert b.generations() == 1
        assert gw.sample("gateway_upstream_retries_total", reason="connect") == 1
        assert gw.sample("gateway_upstream_ejections_total", upstream=a.url, reason="connect") == 1
        state = await gw.upstreams()
        assert state[a.url]["in_rotation"] is False and state[a.url]["ejected"] == "connect"
        # Out of rotation, it gets no more tries.
        assert (await gw.chat()).status_code == 200
        assert gw.sample("gateway_upstream_retries_total", reason="connect") == 1
        assert b.generations() == 2


async def test_a_request_is_retried_once_only(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, b = engines
    async with running(settings_for(tmp_path, [a.url, b.url])) as gw:
        await a.stop()
        await b.stop()

        response = await gw.chat()

        assert response.status_code == 503, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert gw.sample("gateway_upstream_retries_total", reason="connect") == 1


async def _answer_json(writer: asyncio.StreamWriter, body: bytes) -> None:
    """A whole HTTP/1.1 200 answer with a JSON body, then the connection closed."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


async def _resetting_engine(port: int) -> asyncio.Server:
    """Answers the health probe and the model list, and resets every POST before a byte."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"POST"):
            writer.transport.abort()
            return
        body = b'{"object": "list", "data": [{"id": "smollm2"}]}'
        await _answer_json(writer, body)

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_a_reset_before_any_byte_is_sent_to_the_other_replica(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    _, b = engines
    port = free_port()
    server = await _resetting_engine(port)
    resetting = f"http://127.0.0.1:{port}"
    try:
        async with running(settings_for(tmp_path, [resetting, b.url])) as gw:
            response = await gw.chat()

            assert response.status_code == 200, response.text
            assert b.generations() == 1
            assert gw.sample("gateway_upstream_retries_total", reason="reset") == 1
            # One reset is not a burst: it stays in rotation with one failure counted.
            state = (await gw.upstreams())[resetting]
            assert state["in_rotation"] and state["failures_in_row"] == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stream_that_started_is_never_sent_again(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, b = engines
    a.state.break_after_chunks = 1
    async with running(settings_for(tmp_path, [a.url, b.url])) as gw:
        response = await gw.chat(stream=True)

        assert response.status_code == 200
        assert '"error"' in response.text
        assert b.generations() == 0
        assert gw.sample("gateway_upstream_retries_total", reason="reset") == 0
        assert gw.sample("gateway_upstream_ejections_total", upstream=a.url, reason="broken") == 1


async def test_a_burst_of_5xx_ejects_for_a_while_then_a_probe_readmits(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, b = engines
    a.state.status = 500
    outliers = {"consecutive_failures": 3, "base_ejection_s": 0.5}
    settings = settings_for(tmp_path, [a.url, b.url], outliers=outliers, health_interval_s=0.1)
    async with running(settings) as gw:
        # Sequential requests: each goes to a (first of two idle replicas) until it is out.
        statuses = [(await gw.chat()).status_code for _ in range(3)]
        assert statuses == [500, 500, 500]  # a 5xx answer is the engine's: passed on
        ejections = gw.sample("gateway_upstream_ejections_total", upstream=a.url, reason="failures")
        assert ejections == 1
        assert [(await gw.chat()).status_code for _ in range(4)] == [200] * 4
        assert b.generations() == 4
        assert (await gw.upstreams())[a.url]["ejected"] == "failures"

        a.state.status = 200
        await eventually(lambda: gw.pool.ready and gw.pool.replicas[0].outlier.reason is None)
        before = a.generations()
        assert (await gw.chat()).status_code == 200
        assert a.generations() == before + 1


async def test_failures_everywhere_never_empty_the_pool(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, b = engines
    a.state.status = b.state.status = 500
    settings = settings_for(tmp_path, [a.url, b.url], outliers={"consecutive_failures": 2})
    async with running(settings) as gw:
        for _ in range(12):
            assert (await gw.chat()).status_code == 500

        state = await gw.upstreams()
        assert sorted(u["in_rotation"] for u in state.values()) == [False, True]
        assert gw.pool.ready


async def test_a_restarted_replica_is_readmitted_with_its_adapters(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, b = engines
    async with running(settings_for(tmp_path, [a.url, b.url], health_interval_s=0.1)) as gw:
        assert (await gw.chat("a")).status_code == 200
        assert "a--v1" in a.state.loras
        await a.stop()
        await eventually(lambda: not gw.pool.replicas[0].healthy)
        a.state.loras.clear()  # what a restarted vLLM holds: nothing

        await a.start()

        await eventually(lambda: gw.pool.replicas[0].in_rotation(time.monotonic()))
        assert "a--v1" in a.state.loras
        assert (await gw.upstreams())[a.url]["ejected"] is None


async def test_replicas_follow_what_the_name_resolves_to(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, _ = engines
    answers: list[list[str]] = [["127.0.0.1"]]

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "vllm.test.svc"
        return answers[-1]

    # Every address is a replica on the name's port (127.0.0.2 has no engine: it stays down).
    async with running(settings_for(tmp_path, [a.url])) as gw:
        discovery = DnsDiscovery(f"http://vllm.test.svc:{a.port}", gw.pool, 60.0, resolver)
        await discovery.refresh()
        assert [r.url for r in gw.pool.replicas] == [a.url]

        answers.append(["127.0.0.1", "127.0.0.2"])
        await discovery.refresh()
        second = f"http://127.0.0.2:{a.port}"
        assert [r.url for r in gw.pool.replicas] == [a.url, second]
        assert not gw.pool.replicas[1].healthy  # joins once its probe passes

        answers.append([])  # a name that resolves to nothing keeps the replicas
        assert await discovery.refresh() is False
        assert len(gw.pool.replicas) == 2

        answers.append(["127.0.0.2"])
        await discovery.refresh()
        assert [r.url for r in gw.pool.replicas] == [second]
        assert (await gw.upstreams()).keys() == {second}


async def test_the_real_resolver_and_ipv6_urls() -> None:
    assert "127.0.0.1" in await resolve_all("localhost", 80)
    assert replica_url("http", "::1", 8000) == "http://[::1]:8000"
    assert replica_url("http", "10.0.0.7", 8000) == "http://10.0.0.7:8000"


async def test_a_gateway_on_dns_finds_its_replica(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    a, _ = engines
    settings = settings_for(tmp_path, [], upstream_dns=f"http://localhost:{a.port}")
    assert not settings.managed_engine

    async with running(settings) as gw:
        await eventually(lambda: gw.pool.ready)
        response = await gw.chat()

    assert response.status_code == 200, response.text
    assert a.generations() == 1


@pytest.mark.parametrize(
    "value", ["vllm:8000", "http://:8000", "http://vllm:99999", "http://vllm:8000/v1"]
)
def test_a_bad_dns_setting_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="upstream_dns"):
        Settings(upstream_dns=value, state_dir=tmp_path)


def test_urls_and_dns_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Settings(upstream_urls=["http://a:1"], upstream_dns="http://b:1", state_dir=tmp_path)


async def test_a_reset_on_the_only_replica_is_sent_to_it_once_more(tmp_path: Path) -> None:
    port = free_port()
    resets = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"POST") and resets == 0:
            resets += 1
            writer.transport.abort()
            return
        if head.startswith(b"POST"):
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            body = json.dumps(_answer()).encode()
        else:
            body = b'{"object": "list", "data": [{"id": "smollm2"}]}'
        await _answer_json(writer, body)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        async with running(settings_for(tmp_path, [f"http://127.0.0.1:{port}"])) as gw:
            response = await gw.chat()
    finally:
        server.close()
        await server.wait_closed()

    assert response.status_code == 200, response.text
    assert resets == 1
    assert gw.sample("gateway_upstream_retries_total", reason="reset") == 1


def _answer() -> dict[str, Any]:
    message = {"role": "assistant", "content": "hi"}
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "smollm2",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
