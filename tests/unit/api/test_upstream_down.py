from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.testing.adapters import TINY_BASE
from gateway.testing.server import free_port


@pytest.fixture
async def client_without_engine(
    adapter_root: Path, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    # A real socket nobody listens on: connections are refused.
    settings = Settings(
        base_model_name="smollm2",
        upstream_urls=[f"http://127.0.0.1:{free_port()}"],
        adapter_root=adapter_root,
        state_dir=tmp_path / "state",
    )
    app = create_app(settings, base_info=TINY_BASE)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c,
    ):
        yield c


@pytest.mark.parametrize("stream", [False, True])
async def test_no_ready_engine_is_503(
    client_without_engine: httpx.AsyncClient, stream: bool
) -> None:
    response = await client_without_engine.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "stream": stream},
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "upstream_unavailable"
    ready = await client_without_engine.get("/readyz")
    assert ready.status_code == 503
