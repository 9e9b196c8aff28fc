from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.server import serve_in_loop

CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def sse_events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]


@pytest.fixture
async def socket_client(
    metrics: Metrics, adapter_root: Path, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngineState]]:
    # In-memory ASGI transports buffer whole responses: real sockets show the timing.
    state = FakeEngineState(base_model="smollm2")
    async with serve_in_loop(create_fake_vllm(state)) as engine_url:
        settings = Settings(
            base_model_name="smollm2",
            upstream_urls=[engine_url],
            upstream_read_timeout_s=0.5,
            adapter_root=adapter_root,
            state_dir=tmp_path / "state",
        )
        app = create_app(settings, metrics=metrics, base_info=TINY_BASE)
        async with serve_in_loop(app) as gateway_url:
            async with httpx.AsyncClient(base_url=gateway_url) as c:
                yield c, state


async def test_stream_is_relayed_chunk_by_chunk(
    socket_client: tuple[httpx.AsyncClient, FakeEngineState], metrics: Metrics
) -> None:
    client, fake_state = socket_client
    fake_state.stream_chunks = 4
    fake_state.chunk_delay_s = 0.05
    arrivals: list[float] = []
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-adapter"] == "pirate@1"
        body = b""
        async for chunk in response.aiter_bytes():
            arrivals.append(time.perf_counter())
            body += chunk
    events = sse_events(body.decode())
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == [
        "tok0 ",
        "tok1 ",
        "tok2 ",
        "tok3 ",
    ]
    # Chunks arrive spread over time, not in one buffered piece at the end.
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.1
    ttft = metrics.registry.get_sample_value(
        "gateway_time_to_first_token_seconds_count",
        {"endpoint": "/v1/chat/completions", "adapter": "pirate", "version": "1"},
    )
    assert ttft == 1


async def test_completion_stream_relays_text(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": "smollm2", "prompt": "x", "stream": True}
    )
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["text"] == "tok0 "


async def test_mid_stream_failure_ends_with_error_event(
    client: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    fake_state.stream_chunks = 10
    fake_state.break_after_chunks = 2
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert len(events) == 3
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == [
        "tok0 ",
        "tok1 ",
    ]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error"
    assert "[DONE]" not in response.text
    assert (
        metrics.registry.get_sample_value("gateway_upstream_errors_total", {"kind": "broken"}) == 1
    )
    labels = {
        "endpoint": "/v1/chat/completions",
        "adapter": "pirate",
        "version": "1",
        "status_class": "5xx",
    }
    assert metrics.registry.get_sample_value("gateway_requests_total", labels) == 1
    assert metrics.in_flight._value.get() == 0


async def test_slow_engine_is_504(
    socket_client: tuple[httpx.AsyncClient, FakeEngineState],
) -> None:
    client, fake_state = socket_client
    fake_state.delay_s = 1.0  # the test settings allow 0.5 s
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"


async def test_stalled_stream_ends_with_timeout_event(
    socket_client: tuple[httpx.AsyncClient, FakeEngineState],
) -> None:
    client, fake_state = socket_client
    fake_state.stream_chunks = 3
    fake_state.chunk_delay_s = 1.0
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert time.perf_counter() - started < 5
    events = sse_events(response.text)
    assert json.loads(events[-1])["error"]["type"] == "upstream_timeout"


async def test_client_disconnect_stops_reading_the_engine(
    socket_client: tuple[httpx.AsyncClient, FakeEngineState], metrics: Metrics
) -> None:
    client, fake_state = socket_client
    fake_state.stream_chunks = 50
    fake_state.chunk_delay_s = 0.05
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        async for _ in response.aiter_bytes():
            break  # the client leaves after the first chunk
    for _ in range(40):
        if metrics.in_flight._value.get() == 0:
            break
        await asyncio.sleep(0.05)
    # The relay stopped long before the engine's 2.5 s stream would have ended.
    assert metrics.in_flight._value.get() == 0
    assert time.perf_counter() - started < 2.0


async def test_a_stream_whose_headers_cannot_be_sent_releases_its_engine_and_adapter(
    app: FastAPI, metrics: Metrics
) -> None:
    # The client is gone before the response starts: the relay generator never runs, yet
    # the engine connection, the adapter lease and the in-flight gauge must all be released.
    body = json.dumps(CHAT).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"gw")],
        "client": ("127.0.0.1", 40000),
        "server": ("gw", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the client went away")

    await app(scope, receive, send)

    replica = app.state.pool.replicas[0]
    assert replica.in_flight == 0
    assert replica.residency.busy("pirate--v1") == 0
    assert metrics.registry.get_sample_value("gateway_requests_in_flight") == 0
    recorded = {"endpoint": "/v1/chat/completions", "adapter": "pirate", "version": "1"}
    assert (
        metrics.registry.get_sample_value(
            "gateway_requests_total", {**recorded, "status_class": "4xx"}
        )
        == 1
    )
