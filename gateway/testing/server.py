"""Run an ASGI app on a real loopback socket inside the current event loop, or a gateway
behind an in-memory client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.registry.validation import BaseModelInfo


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_in_loop(app: ASGIApp, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1; yield its base URL; stop on exit."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        raise RuntimeError(f"test server on port {port} did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, metrics: Metrics, base_info: BaseModelInfo | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway of its own, started and stopped here, and an in-memory client of it."""
    app = create_app(settings, metrics=metrics, base_info=base_info)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client
