"""The rollout admin API through the whole app with the fake engine: canary steps and sticky
assignment, rollback, abort and promotion, refusals that change nothing, the versions a
rollout protects, the stable version, restarts (SQLite and PostgreSQL) and metrics.

The shadow stage is in `test_rollouts_shadow.py`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.registry.database import make_engine, session_factory
from gateway.registry.schema import VersionState
from gateway.registry.store import Registry
from gateway.rollout.assign import subject_of, variant
from gateway.testing.adapters import TINY_BASE, write_adapter
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.server import app_client

ROLLOUTS = "/admin/rollouts"
PIRATE = f"{ROLLOUTS}/pirate"
V = "/admin/adapters/pirate/versions"
USERS = [f"user-{i}" for i in range(40)]
Json = dict[str, Any]


async def start(client: httpx.AsyncClient, version: int = 2, **body: Any) -> httpx.Response:
    return await client.post(ROLLOUTS, json={"route": "pirate", "version": version, **body})


async def command(client: httpx.AsyncClient, name: str, **body: Any) -> httpx.Response:
    return await client.post(f"{PIRATE}/{name}", json=body or None)


async def canary_at(client: httpx.AsyncClient, step: int, plan: Json | None = None) -> Json:
    """Start a rollout of pirate@2 and advance it to canary step `step`."""
    assert (await start(client, plan=plan)).status_code == 201
    for _ in range(step + 1):
        response = await command(client, "advance")
        assert response.status_code == 200, response.text
    out: Json = response.json()
    return out


async def ask(
    client: httpx.AsyncClient, model: str = "pirate", user: str | None = None, **headers: str
) -> tuple[str, str | None]:
    """(x-adapter, x-variant) of a chat request."""
    body: Json = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if user is not None:
        body["user"] = user
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    # Stable or canary, the answer names what the client asked for.
    assert response.json()["model"] == model
    return response.headers["x-adapter"], response.headers.get("x-variant")


async def assigned(client: httpx.AsyncClient, users: list[str]) -> dict[str, str]:
    response = await client.post(f"{PIRATE}/assignments", json={"subjects": users})
    assert response.status_code == 200, response.text
    return dict(zip(users, response.json()["variants"], strict=True))


def to_candidate(fake_state: FakeEngineState) -> int:
    return sum(r["model"] == "pirate--v2" for r in fake_state.received)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"route": "pirate", **labels}) or 0.0


def refused(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (code is None or error["code"] == code), error


async def world(client: httpx.AsyncClient, fake_state: FakeEngineState) -> tuple[Any, ...]:
    """What a refused call must leave alone: rollouts, audit trail, versions, the engine."""
    rollouts = (await client.get(ROLLOUTS)).json()["data"]
    for rollout in rollouts:
        rollout.pop("time_in_step_s")
    events = (await client.get("/admin/audit", params={"limit": 10_000})).json()["data"]
    adapters = (await client.get("/admin/adapters")).json()["data"]
    return rollouts, len(events), adapters, dict(fake_state.loras)


# -- canary ---------------------------------------------------------------------------------


async def test_canary_serves_each_user_the_variant_the_assignments_endpoint_gives(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    plan = {"canary": [{"weight": 10, "min_samples": 1_000}, {"weight": 25}, {"weight": 100}]}
    out = await canary_at(client, 0, plan)
    unforced = await command(client, "advance")
    forced = await command(client, "advance", force=True, reason="enough seen")

    refused(unforced, 409, "minimums_not_met")
    assert (forced.json()["stage"], forced.json()["step"], forced.json()["weight"]) == (
        "canary",
        1,
        25.0,
    )
    last = forced.json()["events"][-1]
    assert (last["action"], last["reason"]) == ("rollout:advance", "enough seen")
    assert last["detail"]["forced_past"] == ["0 of 1000 canary requests"]
    variants = await assigned(client, USERS)
    assert set(variants.values()) == {"stable", "canary"}
    for _ in range(3):  # sticky: the same answer every time
        for user in USERS:
            adapter, got = await ask(client, user=user)
            assert got == variants[user]
            assert adapter == ("pirate@2" if got == "canary" else "pirate@1")
            assert fake_state.received[-1]["model"] == adapter.replace("@", "--v")
    sessions = [f"session-{i}" for i in range(40)]
    for session in sessions:
        expected = variant(out["id"], subject_of({}, {"x-session-id": session}, None), 2_500)
        assert (await ask(client, **{"x-session-id": session}))[1] == expected
        assert (await ask(client, **{"x-session-id": session}))[1] == expected


async def test_a_paused_canary_keeps_its_users_and_refuses_to_advance(
    client: httpx.AsyncClient,
) -> None:
    await canary_at(client, 2)
    before = await assigned(client, USERS)

    paused = await command(client, "pause")
    served = {u: (await ask(client, user=u))[1] for u in USERS}

    assert paused.json()["paused"] is True and paused.json()["weight"] == 25.0
    assert served == before
    refused(await command(client, "advance", force=True), 409, "rollout_paused")
    refused(await command(client, "promote", force=True), 409, "rollout_paused")


async def test_name_at_version_requests_bypass_the_rollout(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    await canary_at(client, 4)  # 100%: everyone who asks for `pirate` gets the candidate
    counted = sample(metrics, "gateway_rollout_requests_total", variant="canary")

    pinned = [await ask(client, "pirate@1", user=u) for u in USERS[:5]]
    named = await ask(client, "pirate", user=USERS[0])

    assert pinned == [("pirate@1", None)] * 5
    assert named == ("pirate@2", "canary")
    assert sample(metrics, "gateway_rollout_requests_total", variant="canary") == counted + 1
    assert sample(metrics, "gateway_rollout_requests_total", variant="stable") == 0


# -- ends -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "stage"), [("rollback", "rolled_back"), ("abort", "aborted")])
async def test_rollback_and_abort_return_every_user_to_stable_at_once(
    client: httpx.AsyncClient, fake_state: FakeEngineState, name: str, stage: str
) -> None:
    await canary_at(client, 3)  # 50%
    on_canary = [u for u, v in (await assigned(client, USERS)).items() if v == "canary"]
    assert {await ask(client, user=u) for u in on_canary} == {("pirate@2", "canary")}
    sent = to_candidate(fake_state)

    ended = await command(client, name, reason="bad answers")
    after = [await ask(client, user=u) for u in on_canary * 2]

    assert ended.status_code == 200, ended.text
    out = ended.json()
    assert (out["stage"], out["active"], out["weight"]) == (stage, False, 0.0)
    assert out["ended_at"] is not None
    assert (out["events"][-1]["action"], out["events"][-1]["reason"]) == (
        f"rollout:{name}",
        "bad answers",
    )
    assert set(after) == {("pirate@1", None)}
    assert to_candidate(fake_state) == sent
    assert (await client.get(f"{V}/2")).json()["pinned"] is False
    refused(
        await client.post(f"{PIRATE}/assignments", json={"subjects": ["x"]}),
        404,
        "rollout_not_found",
    )
    refused(await command(client, "resume"), 404, "rollout_not_found")
    assert (await start(client)).status_code == 201  # the route is free for the next one


@pytest.mark.parametrize("pinned_before", [False, True])
async def test_promote_makes_the_candidate_the_name_s_stable_version(
    client: httpx.AsyncClient, adapter_root: Path, pinned_before: bool
) -> None:
    if pinned_before:
        assert (await client.post(f"{V}/2/pin")).status_code == 200
    await canary_at(client, 1)

    early = await command(client, "promote")
    promoted = await command(client, "promote", force=True)
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    registered = await client.post("/admin/adapters", json={"name": "pirate", "path": "pirate/v3"})
    served = {await ask(client, user=u) for u in USERS}

    refused(early, 409, "canary_not_passed")
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["stage"], promoted.json()["active"]) == ("promoted", False)
    assert promoted.json()["events"][-1]["detail"]["skipped_steps"] == 3
    assert registered.status_code == 201, registered.text
    assert served == {("pirate@2", None)}
    assert (await client.get(f"{V}/2")).json()["pinned"] is pinned_before


# -- refusals -------------------------------------------------------------------------------


async def rolling(client: httpx.AsyncClient, app: FastAPI, root: Path) -> None:
    assert (await start(client)).status_code == 201


async def retired(client: httpx.AsyncClient, app: FastAPI, root: Path) -> None:
    assert (await client.post(f"{V}/2/retire")).status_code == 200


async def failed(client: httpx.AsyncClient, app: FastAPI, root: Path) -> None:
    # As another replica (or a refused load) would: straight in the registry.
    registry = Registry(session_factory(make_engine(app.state.settings.resolved_database_url)))
    registry.set_state("pirate", 2, VersionState.FAILED, actor="test")
    await app.state.lifecycle.refresh()


async def third(client: httpx.AsyncClient, app: FastAPI, root: Path) -> None:
    await rolling(client, app, root)
    write_adapter(root / "pirate/v3", fill=5.0)
    assert (
        await client.post("/admin/adapters", json={"name": "pirate", "path": "pirate/v3"})
    ).status_code == 201


Setup = Callable[[httpx.AsyncClient, FastAPI, Path], Awaitable[None]] | None
NOT_JSON = b"{not json"


def of(version: int, *weights: float, **extra: Any) -> Json:
    """A start body for pirate@version (with canary `weights`, when given)."""
    plan = {"plan": {"canary": [{"weight": w} for w in weights]}} if weights else {}
    return {"route": "pirate", "version": version, **plan, **extra}


# name: (setup, path, JSON body or raw bytes, status, code)
BAD: dict[str, tuple[Setup, str, Json | bytes | None, int, str | None]] = {
    "unknown_route": (None, ROLLOUTS, of(1, route="nope"), 404, "adapter_not_found"),
    "unknown_version": (None, ROLLOUTS, of(9), 404, "adapter_not_found"),
    "retired_version": (retired, ROLLOUTS, of(2), 409, "version_not_ready"),
    "failed_version": (failed, ROLLOUTS, of(2), 409, "version_not_ready"),
    "candidate_is_stable": (None, ROLLOUTS, of(1), 409, "already_stable"),
    "route_busy": (third, ROLLOUTS, of(3), 409, "rollout_active"),
    "weight_above_100": (None, ROLLOUTS, of(2, 150), 400, "invalid_plan"),
    "negative_weight": (None, ROLLOUTS, of(2, -1), 400, "invalid_plan"),
    "falling_weights": (None, ROLLOUTS, of(2, 50, 25), 400, "invalid_plan"),
    "version_zero": (None, ROLLOUTS, of(0), 400, None),
    "unknown_start_field": (None, ROLLOUTS, of(2, colour="red"), 400, None),
    "malformed_start_json": (None, ROLLOUTS, NOT_JSON, 400, None),
    "promote_from_shadow": (rolling, f"{PIRATE}/promote", None, 409, "canary_not_passed"),
    "unknown_command": (rolling, f"{PIRATE}/explode", None, 400, None),
    "unknown_command_field": (rolling, f"{PIRATE}/advance", {"forse": True}, 400, None),
    "malformed_command_json": (rolling, f"{PIRATE}/advance", NOT_JSON, 400, None),
    "no_rollout": (None, f"{ROLLOUTS}/french/advance", None, 404, "rollout_not_found"),
    "no_such_route": (None, f"{ROLLOUTS}/nope/rollback", None, 404, "rollout_not_found"),
    "make_stable_during_rollout": (rolling, f"{V}/2/stable", None, 409, "rollout_active"),
    "assignments_without_rollout": (
        None,
        f"{PIRATE}/assignments",
        {"subjects": ["a"]},
        404,
        "rollout_not_found",
    ),
}


@pytest.mark.parametrize(("setup", "url", "body", "status", "code"), BAD.values(), ids=BAD.keys())
async def test_bad_request_is_a_clear_4xx_and_changes_nothing(
    client: httpx.AsyncClient,
    app: FastAPI,
    adapter_root: Path,
    fake_state: FakeEngineState,
    setup: Setup,
    url: str,
    body: Json | bytes | None,
    status: int,
    code: str | None,
) -> None:
    if setup is not None:
        await setup(client, app, adapter_root)
    before = await world(client, fake_state)

    if isinstance(body, bytes):
        response = await client.post(
            url, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await client.post(url, json=body)

    refused(response, status, code)
    assert await world(client, fake_state) == before


async def test_versions_in_a_rollout_cannot_be_taken_away_until_it_ends(
    client: httpx.AsyncClient,
) -> None:
    await canary_at(client, 0)
    during = {
        (version, action): await client.post(f"{V}/{version}/{action}")
        for version in (1, 2)
        for action in ("unload", "unpin", "retire")
    }
    deleted = await client.delete(f"{V}/2")
    await command(client, "abort")

    for response in [*during.values(), deleted]:
        refused(response, 409, "in_rollout")
    assert (await client.get(f"{V}/1")).json()["state"] != "retired"
    assert (await client.post(f"{V}/2/unload")).status_code == 200
    assert (await client.post(f"{V}/2/retire")).status_code == 200
    assert (await client.delete(f"{V}/2")).status_code == 200


# -- the stable version ---------------------------------------------------------------------


async def test_a_new_version_waits_and_make_stable_switches_the_name_to_it(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    registered = await client.post("/admin/adapters", json={"name": "pirate", "path": "pirate/v3"})
    waiting = await ask(client)

    switched = await client.post(f"{V}/2/stable", json={"reason": "checked by hand"})
    now = await ask(client)

    assert registered.json()["version"] == 3
    assert waiting == ("pirate@1", None)
    assert switched.status_code == 200, switched.text
    assert now == ("pirate@2", None)
    events = (await client.get("/admin/audit", params={"adapter": "pirate"})).json()["data"]
    made = [(e["version"], e["reason"], e["detail"]) for e in events if e["action"] == "stable"]
    assert made == [(2, "checked by hand", {"from": 1})]


# -- restarts -------------------------------------------------------------------------------


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """SQLite in the state dir, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    server = os.environ.get(
        "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    name = f"rollouts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{server.rsplit('/', 1)[0]}/{name}"
        finally:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_restarted_gateway_resumes_the_canary_where_it_was(
    settings: Settings, database_url: str | None
) -> None:
    stored = settings.model_copy(update={"database_url": database_url})
    plan = {"canary": [{"weight": 10}, {"weight": 40}, {"weight": 100}]}
    async with app_client(stored, Metrics(), TINY_BASE) as client:
        await canary_at(client, 1, plan)
        before = {u: await ask(client, user=u) for u in USERS}
        status = (await client.get(PIRATE)).json()

    async with app_client(stored, Metrics(), TINY_BASE) as client:
        for _ in range(200):  # the candidate is warmed up here again before it serves
            again = (await client.get(PIRATE)).json()
            if again["warm_here"]:
                break
            await asyncio.sleep(0.02)
        after = {u: await ask(client, user=u) for u in USERS}

    keys = ("id", "stage", "step", "weight", "paused", "plan", "step_started_at", "events")
    assert {k: again[k] for k in keys} == {k: status[k] for k in keys}
    assert [e["action"] for e in again["events"]] == [
        "rollout:start",
        "rollout:advance",
        "rollout:advance",
    ]
    assert (again["stage"], again["step"], again["weight"]) == ("canary", 1, 40.0)
    assert again["totals"] == status["totals"]
    assert sum(status["totals"].values()) == len(USERS)
    assert after == before
    assert {v for _, v in after.values()} == {"stable", "canary"}


# -- metrics --------------------------------------------------------------------------------


async def test_rollout_metrics_follow_the_stage_weight_and_variants(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    await canary_at(client, 2)

    served = [(await ask(client, user=u))[1] for u in USERS]

    assert sample(metrics, "gateway_rollout_stage", stage="canary") == 1
    assert sample(metrics, "gateway_rollout_stage", stage="shadow") == 0
    assert sample(metrics, "gateway_rollout_canary_weight_percent") == 25
    for name in ("stable", "canary"):
        assert sample(metrics, "gateway_rollout_requests_total", variant=name) == served.count(name)
    status = (await client.get(PIRATE)).json()
    assert status["totals"] == {n: served.count(n) for n in ("canary", "stable")}
    assert status["samples"][-1] == {
        "step": 2,
        "name": "canary 3 (25.0%)",
        "counts": {n: served.count(n) for n in ("canary", "stable")},
    }


@pytest.mark.parametrize(("name", "stage"), [("rollback", "rolled_back"), ("promote", "promoted")])
async def test_an_ended_rollout_s_metrics_show_its_end_and_no_canary_weight(
    client: httpx.AsyncClient, metrics: Metrics, name: str, stage: str
) -> None:
    await canary_at(client, 4)
    assert sample(metrics, "gateway_rollout_canary_weight_percent") == 100

    assert (await command(client, name)).json()["stage"] == stage

    assert sample(metrics, "gateway_rollout_stage", stage=stage) == 1
    assert sample(metrics, "gateway_rollout_stage", stage="canary") == 0
    assert sample(metrics, "gateway_rollout_canary_weight_percent") == 0
