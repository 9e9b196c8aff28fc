"""A live gateway for the CLI tests: the fake engine behind it, served on loopback."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.testing.adapters import TINY_BASE, write_adapter
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.server import serve_in_loop


@pytest.fixture
def gateway_url(tmp_path: Path) -> Iterator[str]:
    """A gateway with the fake engine, served from a thread with its own event loop."""
    write_adapter(tmp_path / "adapters" / "pirate" / "v1", fill=1.0)
    write_adapter(tmp_path / "adapters" / "pirate" / "v2", fill=2.0)
    urls: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with serve_in_loop(create_fake_vllm(FakeEngineState(base_model="smollm2"))) as eng:
            settings = Settings(
                base_model_name="smollm2",
                upstream_urls=[eng],
                adapter_root=tmp_path / "adapters",
                state_dir=tmp_path / "state",
                seed_adapters=False,
            )
            async with serve_in_loop(create_app(settings, base_info=TINY_BASE)) as url:
                urls.put(url)
                await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield urls.get(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)
