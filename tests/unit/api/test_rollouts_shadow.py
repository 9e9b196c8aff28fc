"""A rollout's start and shadow stage through the whole app with the fake engine: the
candidate is warmed up before it gets traffic, copies of the route's requests reach it off the
request path (bounded, dropped rather than queued), and the answer pairs are kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.server import app_client

PIRATE = "/admin/rollouts/pirate"
CANDIDATE = "pirate--v2"


async def start(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/admin/rollouts", json={"route": "pirate", "version": 2, **body})


async def ask(client: httpx.AsyncClient, user: str, *, stream: bool = False) -> httpx.Response:
    messages = [{"role": "user", "content": f"hello from {user}"}]
    body = {"model": "pirate", "messages": messages, "user": user, "stream": stream}
    return await client.post("/v1/chat/completions", json=body)


def copies(fake_state: FakeEngineState) -> list[dict[str, Any]]:
    """What the engine received for the candidate, the warm-up left out."""
    return [r for r in fake_state.received if r["model"] == CANDIDATE and "messages" in r]


def shadow_count(metrics: Metrics, outcome: str) -> float:
    labels = {"route": "pirate", "outcome": outcome}
    return metrics.registry.get_sample_value("gateway_shadow_requests_total", labels) or 0.0


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def pairs(client: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    """The rollout's shadow pairs, once there are `n` (reading them writes pending ones)."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = (await client.get(f"{PIRATE}/shadow-pairs")).json()["data"]
        return len(found) >= n

    await until(enough, f"{n} shadow pairs")
    return found


async def test_start_loads_pins_and_warms_the_candidate_before_any_shadow_copy(
    client: httpx.AsyncClient, fake_state: FakeEngineState, engine_url: str
) -> None:
    assert CANDIDATE not in fake_state.loras

    response = await client.post(
        "/admin/rollouts",
        json={"route": "pirate", "version": 2, "reason": "better rhymes"},
        headers={"x-actor": "alice"},
    )
    served = await ask(client, "u1")
    await pairs(client, 1)

    assert response.status_code == 201, response.text
    out = response.json()
    assert (out["stage"], out["step"], out["weight"], out["active"]) == ("shadow", -1, 0.0, True)
    assert (out["stable_version"], out["candidate_version"], out["steps"]) == (1, 2, 5)
    assert out["warm_here"] is True
    start_event = next(e for e in out["events"] if e["action"] == "rollout:start")
    assert (start_event["actor"], start_event["reason"]) == ("anonymous:alice", "better rhymes")
    assert start_event["detail"]["rollout"] == out["id"]
    assert (start_event["detail"]["stable"], start_event["detail"]["candidate"]) == (1, 2)
    version = (await client.get("/admin/adapters/pirate/versions/2")).json()
    assert (version["state"], version["pinned"], version["resident_on"]) == (
        "ready",
        True,
        [engine_url],
    )
    to_candidate = [i for i, r in enumerate(fake_state.received) if r["model"] == CANDIDATE]
    warmup = fake_state.received[to_candidate[0]]
    assert (warmup["prompt"], warmup["max_tokens"]) == ("Hello", 1)
    assert "messages" in fake_state.received[to_candidate[1]]  # the shadow copy comes after
    assert served.headers["x-adapter"] == "pirate@1"


async def test_shadow_answers_with_stable_and_copies_each_request_to_the_candidate(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    assert (await start(client)).status_code == 201
    users = ["ann", "bob", "cid", "dee"]

    answers = [await ask(client, u, stream=u == "dee") for u in users]
    found = await pairs(client, len(users))
    status = (await client.get(PIRATE)).json()

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert (answer.headers["x-adapter"], answer.headers["x-variant"]) == ("pirate@1", "stable")
    assert "tok0" in answers[-1].text  # the streamed one was streamed to the client
    sent = copies(fake_state)
    assert sorted(c["user"] for c in sent) == users
    assert all(c["stream"] is False and "stream_options" not in c for c in sent)
    primaries = [r for r in fake_state.received if r["model"] == "pirate--v1"]
    assert [r["user"] for r in primaries] == users
    by_id = {p["request_id"]: p for p in found}
    assert set(by_id) == {a.headers["x-request-id"] for a in answers}
    for user, answer in zip(users, answers, strict=True):
        pair = by_id[answer.headers["x-request-id"]]
        assert pair["request"]["user"] == user
        assert (pair["primary_version"], pair["shadow_version"]) == (1, 2)
        assert (pair["primary_status"], pair["shadow_status"]) == (200, 200)
        assert pair["primary_body"] == answer.text
        assert json.loads(pair["shadow_body"])["model"] == CANDIDATE
    assert status["totals"] == {"shadow": 4, "stable": 4}
    assert status["samples"] == [
        {"step": -1, "name": "shadow", "counts": {"shadow": 4, "stable": 4}}
    ]
    copy_ids = {
        h["x-request-id"]
        for h in fake_state.received_headers
        if h["x-request-id"].endswith(":shadow")
    }
    assert copy_ids == {a.headers["x-request-id"] + ":shadow" for a in answers}


async def test_shadow_sample_rate_zero_copies_nothing(
    client: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    assert (await start(client, plan={"shadow": {"sample_rate": 0.0}})).status_code == 201

    answers = [await ask(client, f"u{i}") for i in range(5)]

    assert all(a.headers["x-variant"] == "stable" for a in answers)
    assert copies(fake_state) == [] and shadow_count(metrics, "sent") == 0
    assert (await client.get(PIRATE)).json()["totals"] == {"stable": 5}


async def test_a_paused_shadow_copies_nothing_until_resumed(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await start(client)
    paused = await client.post(f"{PIRATE}/pause")

    held = [await ask(client, f"held{i}") for i in range(3)]
    copied_while_paused = len(copies(fake_state))
    resumed = await client.post(f"{PIRATE}/resume")
    await ask(client, "after")
    await pairs(client, 1)

    assert paused.json()["paused"] is True and resumed.json()["paused"] is False
    assert all(a.headers["x-adapter"] == "pirate@1" for a in held)
    assert copied_while_paused == 0
    assert [c["user"] for c in copies(fake_state)] == ["after"]


async def test_shadow_copies_are_counted_sent_and_completed(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    await start(client)

    for i in range(3):
        await ask(client, f"u{i}")
    await pairs(client, 3)

    assert shadow_count(metrics, "sent") == 3
    assert shadow_count(metrics, "completed") == 3
    assert shadow_count(metrics, "dropped") == shadow_count(metrics, "failed") == 0
    requests = {"route": "pirate", "variant": "stable"}
    assert metrics.registry.get_sample_value("gateway_rollout_requests_total", requests) == 3
    stage = {"route": "pirate", "stage": "shadow"}
    assert metrics.registry.get_sample_value("gateway_rollout_stage", stage) == 1


async def test_shadow_copies_beyond_the_limit_are_dropped_never_queued(
    settings: Settings, fake_state: FakeEngineState
) -> None:
    metrics = Metrics()
    bounded = settings.model_copy(
        update={"rollout": settings.rollout.model_copy(update={"shadow_concurrency": 1})}
    )
    async with app_client(bounded, metrics, TINY_BASE) as client:
        assert (await start(client)).status_code == 201
        # Every answer takes a while: the first copy holds the only slot while the other
        # requests' primaries come back and try to send theirs.
        fake_state.delay_s = 0.2
        answers = await asyncio.gather(*(ask(client, f"u{i}") for i in range(8)))

        async def settled() -> bool:
            done = shadow_count(metrics, "completed") + shadow_count(metrics, "failed")
            return done == shadow_count(metrics, "sent")

        await until(settled, "the shadow copies to finish")
        await asyncio.sleep(0.05)  # a queued copy would reach the engine now
        found = await pairs(client, 1)

    assert [a.status_code for a in answers] == [200] * 8
    assert all(a.headers["x-adapter"] == "pirate@1" for a in answers)
    sent, dropped = shadow_count(metrics, "sent"), shadow_count(metrics, "dropped")
    assert dropped > 0 and sent >= 1
    assert sent + dropped == 8
    assert len(copies(fake_state)) == sent == len(found)


async def test_pairs_beyond_the_rollout_s_limit_are_counted_not_stored(
    settings: Settings, fake_state: FakeEngineState
) -> None:
    capped = settings.model_copy(
        update={"rollout": settings.rollout.model_copy(update={"max_pairs_per_rollout": 2})}
    )
    metrics = Metrics()
    async with app_client(capped, metrics, TINY_BASE) as client:
        assert (await start(client)).status_code == 201
        for user in ("ann", "bob", "cid", "dee", "eve"):
            assert (await ask(client, user)).status_code == 200

        async def all_accounted() -> bool:
            status = (await client.get(PIRATE)).json()
            return bool(status["totals"].get("shadow") == 5)

        await until(all_accounted, "five shadow answers counted")
        stored = (await client.get(f"{PIRATE}/shadow-pairs")).json()["data"]

    assert len(stored) == 2
    assert shadow_count(metrics, "completed") == 5
    assert shadow_count(metrics, "unrecorded") == 3
