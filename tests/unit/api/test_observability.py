"""The access log (one line per request, JSON when asked, no secrets, no prompt unless asked)
and OpenTelemetry traces exported over real OTLP/HTTP to a loopback receiver, with the trace
context passed on to the engine."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.auth import hash_key
from gateway.app import create_app
from gateway.config import Settings, TenantKey
from gateway.metrics import Metrics
from gateway.observability.logs import ACCESS_LOGGER, JsonFormatter
from gateway.testing.adapters import TINY_BASE, write_tiny_tree
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.processes import Processes
from gateway.testing.server import serve_in_loop

SECRET_PROMPT = "my passport number is X1234567"
KEY = "lgw-observability-tenant-key"
CHAT = {"model": "pirate", "messages": [{"role": "user", "content": SECRET_PROMPT}]}


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, metrics=Metrics(), base_info=TINY_BASE)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_one_access_line_per_request_without_secrets_or_prompt(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.tenant_keys = [TenantKey(name="team-a", key_sha256=hash_key(KEY))]
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": "req-42"}
    async with gateway(settings) as client:
        answer = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        refused = await client.post("/v1/chat/completions", json=CHAT)
        streamed = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
        )
    assert (answer.status_code, refused.status_code, streamed.status_code) == (200, 401, 200)

    lines = access_lines(caplog)
    assert len(lines) == 3
    first = vars(lines[0])
    assert first["request_id"] == "req-42"
    assert (first["method"], first["path"], first["status"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert (first["route"], first["adapter"], first["tenant"]) == ("pirate", "pirate@1", "team-a")
    assert first["upstream"] == settings.upstream_urls[0]
    assert first["latency_ms"] > 0
    assert vars(lines[1])["status"] == 401
    assert vars(lines[2])["stream"] is True
    formatted = "\n".join(JsonFormatter().format(r) for r in lines)
    assert SECRET_PROMPT not in formatted
    assert KEY not in formatted and hash_key(KEY) not in formatted


async def test_the_prompt_is_logged_only_when_asked(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.log_prompts = True
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with gateway(settings) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200

    [line] = access_lines(caplog)
    assert SECRET_PROMPT in vars(line)["prompt"]


async def test_no_access_line_when_turned_off(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.access_log = False
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with gateway(settings) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200

    assert access_lines(caplog) == []


def test_json_lines_carry_the_extra_fields_and_the_exception() -> None:
    record = logging.LogRecord("gateway.x", logging.ERROR, "f.py", 1, "failed %s", ("x",), None)
    record.request_id = "r1"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()

    line = json.loads(JsonFormatter().format(record))

    assert line["message"] == "failed x" and line["level"] == "ERROR"
    assert line["request_id"] == "r1"
    assert "ValueError: boom" in line["exception"]


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """A loopback OTLP/HTTP trace receiver keeping every export it is sent."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: Request) -> Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        received.append(export)
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    async with serve_in_loop(app) as url:
        yield url, received


def spans_of(exports: list[ExportTraceServiceRequest]) -> list[Any]:
    return [
        span
        for export in exports
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


async def test_traces_reach_an_otlp_endpoint_and_the_engine_joins_the_trace(
    settings: Settings, fake_state: FakeEngineState
) -> None:
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{client_trace}-b7ad6b7169203331-01"
    async with otlp_receiver() as (url, exports):
        settings.otlp_endpoint = url
        async with gateway(settings) as client:
            answer = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"traceparent": traceparent}
            )
            assert answer.status_code == 200
        # The gateway's shutdown flushed its spans.

    spans = {span.name: span for span in spans_of(exports)}
    server = spans["POST /v1/chat/completions"]
    upstream = spans["upstream POST /v1/chat/completions"]
    assert server.trace_id.hex() == client_trace  # the client's trace continues
    assert upstream.trace_id == server.trace_id
    assert upstream.parent_span_id == server.span_id
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["gateway.adapter"].string_value == "pirate@1"
    assert attributes["http.response.status_code"].int_value == 200
    # The engine was sent the upstream span's context.
    [sent] = [h["traceparent"] for h in fake_state.received_headers if "traceparent" in h]
    assert sent == f"00-{client_trace}-{upstream.span_id.hex()}-01"


def test_a_gateway_process_writes_json_lines(tmp_path: Path) -> None:
    write_tiny_tree(tmp_path, "pirate", versions=1)
    env = {"GATEWAY_LOG_FORMAT": "json"}
    with Processes(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}", env=env) as running:
        running.start_engine()
        gateway = running.start_gateway()
        body = {"model": "smollm2", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"x-request-id": "json-line-1"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        gateway.kill()

    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line.get("request_id") == "json-line-1"]
    assert access["logger"] == ACCESS_LOGGER and access["status"] == 200
    assert access["adapter"] == "base"
    assert any(line["logger"].startswith("gateway.") for line in lines if line is not access)
    assert SECRET_PROMPT not in gateway.log_text()
