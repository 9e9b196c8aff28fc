"""A refresh of the live rollouts that read the registry before this replica's own command
does not put the older state back (the request path serves what the command set)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
from fastapi import FastAPI

ROLLOUTS = "/admin/rollouts"
PIRATE = f"{ROLLOUTS}/pirate"


async def test_a_stale_refresh_does_not_undo_an_advance(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    plan = {"canary": [{"weight": 10}, {"weight": 40}, {"weight": 100}]}
    started = await client.post(ROLLOUTS, json={"route": "pirate", "version": 2, "plan": plan})
    assert started.status_code == 201, started.text
    # Started in shadow; one advance to the canary's first step (10%).
    assert (await client.post(f"{PIRATE}/advance")).status_code == 200
    manager = app.state.rollouts
    store = manager._store
    original = store.active
    reading, release = threading.Event(), threading.Event()
    reads: list[int] = []

    def slow_first_read() -> Any:
        rows = original()
        reads.append(len(rows))
        if len(reads) == 1:
            reading.set()
            release.wait(5)
        return rows

    store.active = slow_first_read
    refresh = asyncio.create_task(manager.refresh())
    await asyncio.to_thread(reading.wait, 5)
    advanced = await client.post(f"{PIRATE}/advance")  # to 40% while the refresh reads
    assert advanced.status_code == 200, advanced.text
    assert manager._live["pirate"].weight == 40.0
    release.set()
    await refresh
    assert manager._live["pirate"].weight == 40.0
    assert len(reads) == 2  # the first read was older than the command: read again
