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

ADAPTERS = [
    AdapterVersion("pirate", 1, Path("/adapters/pirate/v1")),
    AdapterVersion("pirate", 2, Path("/adapters/pirate/v2")),
    AdapterVersion("french", 1, Path("/adapters/french/v1")),
]


@pytest.fixture
def fake_state() -> FakeEngineState:
    return FakeEngineState(base_model="smollm2")


@pytest.fixture
def engine_transport(fake_state: FakeEngineState) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=create_fake_vllm(fake_state))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        base_model_name="smollm2",
        upstream_urls=["http://engine-a:8000"],
        max_body_bytes=4096,
        upstream_read_timeout_s=0.5,
    )


@pytest.fixture
async def app(
    settings: Settings, engine_transport: httpx.AsyncBaseTransport, metrics: Metrics
) -> AsyncIterator[FastAPI]:
    application = create_app(
        settings, transport=engine_transport, adapters=ADAPTERS, metrics=metrics
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
