from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.routing.catalog import AdapterVersion
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.server import serve_in_loop

ADAPTERS = [
    AdapterVersion("pirate", 1, Path("/adapters/pirate/v1")),
    AdapterVersion("pirate", 2, Path("/adapters/pirate/v2")),
    AdapterVersion("french", 1, Path("/adapters/french/v1")),
]


@pytest.fixture
def fake_state() -> FakeEngineState:
    return FakeEngineState(base_model="smollm2")


@pytest.fixture
async def engine_url(fake_state: FakeEngineState) -> AsyncIterator[str]:
    async with serve_in_loop(create_fake_vllm(fake_state)) as url:
        yield url


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def settings(engine_url: str) -> Settings:
    return Settings(
        base_model_name="smollm2",
        upstream_urls=[engine_url],
        max_body_bytes=4096,
        upstream_read_timeout_s=0.5,
    )


@pytest.fixture
async def app(settings: Settings, metrics: Metrics) -> AsyncIterator[FastAPI]:
    application = create_app(settings, adapters=ADAPTERS, metrics=metrics)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # In memory on the client side; the engine is a real loopback server.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
