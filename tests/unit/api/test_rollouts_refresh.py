"""A refresh of the live rollouts that read the registry before this replica's own command
does not put the older state back (the request path serves what the command set)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from gateway.testing.held import HeldFirstCall

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
    held = HeldFirstCall(store.active)
    store.active = held
    refresh = asyncio.create_task(manager.refresh())
    await held.started()
    advanced = await client.post(f"{PIRATE}/advance")  # to 40% while the refresh reads
    assert advanced.status_code == 200, advanced.text
    assert manager._live["pirate"].weight == 40.0
    held.release()
    await refresh
    assert manager._live["pirate"].weight == 40.0
    assert held.calls == 2  # the first read was older than the command: read again
