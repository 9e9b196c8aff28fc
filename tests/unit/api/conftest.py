from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE, write_adapter
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.server import serve_in_loop

# Seeded into the registry at start: pirate@1, pirate@2 and french@1.
ADAPTERS = {"pirate/v1": 1.0, "pirate/v2": 2.0, "french/v1": 3.0}


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    for relative, fill in ADAPTERS.items():
        write_adapter(root / relative, fill=fill)
    return root


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
def settings(engine_url: str, adapter_root: Path, tmp_path: Path) -> Settings:
    return Settings(
        base_model_name="smollm2",
        upstream_urls=[engine_url],
        adapter_root=adapter_root,
        state_dir=tmp_path / "state",
        max_body_bytes=4096,
        upstream_read_timeout_s=0.5,
    )


@pytest.fixture
async def app(settings: Settings, metrics: Metrics) -> AsyncIterator[FastAPI]:
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # In memory on the client side; the engine is a real loopback server.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
