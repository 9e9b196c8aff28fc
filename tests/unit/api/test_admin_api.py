"""The admin API (`/admin`) through the whole app: the fake vLLM, a real registry database
(SQLite, and PostgreSQL where the registry's durability matters), the audit trail and metrics.

PostgreSQL is the local server (`GATEWAY_TEST_POSTGRES_URL`); each test gets a new database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.api.auth import hash_key
from gateway.config import Settings, TenantKey
from gateway.metrics import Metrics
from gateway.registry.database import make_engine, session_factory
from gateway.registry.schema import VersionState
from gateway.registry.store import Registry
from gateway.registry.validation import BaseModelInfo, content_sha256
from gateway.testing.adapters import MODULES, TINY_BASE, write_adapter
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.server import app_client, serve_in_loop

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ADAPTERS = "/admin/adapters"
ADMIN_KEY = "admin-secret"
TENANT_KEY = "tenant-secret"
# Twice the tiny base's width: adapters trained on it do not fit.
BIGGER_BASE = BaseModelInfo(
    "bigger", TINY_BASE.num_layers, {m: (2 * i, 2 * o) for m, (i, o) in TINY_BASE.shapes.items()}
)
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
Body = dict[str, Any]


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the state dir) unless a test asks for PostgreSQL."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    name = f"gw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def settings(settings: Settings, database_url: str | None) -> Settings:
    return settings.model_copy(update={"database_url": database_url})


def gateway(settings: Settings, metrics: Metrics) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """A gateway of its own (started and stopped here) and a client of it."""
    return app_client(settings, metrics, TINY_BASE)


@pytest.fixture
async def keyed_client(settings: Settings, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    keyed = settings.model_copy(
        update={
            "admin_key_sha256": hash_key(ADMIN_KEY),
            "tenant_keys": [TenantKey(name="team-a", key_sha256=hash_key(TENANT_KEY))],
        }
    )
    async with gateway(keyed, metrics) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def register(client: httpx.AsyncClient, name: str, path: str, **extra: Any) -> httpx.Response:
    return await client.post(ADAPTERS, json={"name": name, "path": path, **extra})


async def act(
    client: httpx.AsyncClient, ref: str, action: str, body: Body | None = None, **kw: Any
) -> httpx.Response:
    """POST an action (`load`, `retire`, ...) on `name@version`."""
    name, version = ref.split("@")
    return await client.post(f"{ADAPTERS}/{name}/versions/{version}/{action}", json=body, **kw)


async def version_of(client: httpx.AsyncClient, ref: str) -> Body:
    name, version = ref.split("@")
    response = await client.get(f"{ADAPTERS}/{name}/versions/{version}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def model_ids(client: httpx.AsyncClient) -> set[str]:
    return {m["id"] for m in (await client.get("/v1/models")).json()["data"]}


async def chat(client: httpx.AsyncClient, model: str, **kw: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return await client.post("/v1/chat/completions", json=body, **kw)


async def audit(client: httpx.AsyncClient, adapter: str | None = None, **kw: Any) -> list[Body]:
    params = {"adapter": adapter} if adapter else {}
    response = await client.get("/admin/audit", params=params, **kw)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def snapshot(client: httpx.AsyncClient, fake_state: FakeEngineState) -> tuple[Any, ...]:
    """What a refused call must leave alone: the registry, the catalogue and the engine."""
    adapters = (await client.get(ADAPTERS)).json()["data"]
    return adapters, await model_ids(client), dict(fake_state.loras)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> Body:
    """An OpenAI-shaped error with `status` (and `code`, when given)."""
    assert response.status_code == status, response.text
    error: Body = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def register_count(metrics: Metrics, outcome: str) -> float:
    labels = {"operation": "register", "outcome": outcome}
    value = metrics.registry.get_sample_value("gateway_registry_operations_total", labels)
    return value or 0.0


# -- registration -------------------------------------------------------------------------


@BOTH_DATABASES
async def test_register_creates_a_version_and_the_same_content_again_answers_it(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    manifest = {"dataset": "pirate.jsonl", "steps": 30, "base_model": "smollm2"}
    body = {"manifest": manifest, "reason": "new data"}

    created = await register(client, "pirate", "pirate/v3", **body)
    again = await register(client, "pirate", "pirate/v3", **body)

    assert created.status_code == 201, created.text
    out = created.json()
    assert out["name"] == "pirate" and out["version"] == 3 and out["ref"] == "pirate@3"
    assert out["state"] == "registered" and out["pinned"] is False
    assert out["sha256"] == content_sha256(adapter_root / "pirate/v3")
    assert out["rank"] == 2 and out["target_modules"] == sorted(MODULES)
    assert out["manifest"] == manifest and out["path"] == "pirate/v3"
    assert again.status_code == 200, again.text
    assert again.json()["version"] == 3 and again.json()["sha256"] == out["sha256"]
    versions = (await client.get(f"{ADAPTERS}/pirate")).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3]
    registered = [e for e in await audit(client, "pirate") if e["action"] == "register"]
    assert [e["version"] for e in registered if e["version"] == 3] == [3]


@BOTH_DATABASES
async def test_other_content_under_the_same_name_is_the_next_version(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    write_adapter(adapter_root / "pirate/v4", fill=6.0)

    third = await register(client, "pirate", "pirate/v3")
    fourth = await register(client, "pirate", "pirate/v4")

    assert (third.status_code, third.json()["version"]) == (201, 3)
    assert (fourth.status_code, fourth.json()["version"]) == (201, 4)
    assert third.json()["sha256"] != fourth.json()["sha256"]


@BOTH_DATABASES
async def test_registered_version_is_listed_served_on_demand_and_becomes_ready(
    client: httpx.AsyncClient, adapter_root: Path, fake_state: FakeEngineState, engine_url: str
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    assert (await register(client, "pirate", "pirate/v3")).status_code == 201

    listed = await model_ids(client)
    response = await chat(client, "pirate@3")

    assert "pirate@3" in listed
    assert response.status_code == 200, response.text
    assert response.headers["x-adapter"] == "pirate@3"
    assert fake_state.received[-1]["model"] == "pirate--v3"
    assert fake_state.loras["pirate--v3"] == str((adapter_root / "pirate/v3").resolve())
    version = await version_of(client, "pirate@3")
    assert version["state"] == "ready" and version["resident_on"] == [engine_url]


@BOTH_DATABASES
async def test_concurrent_registrations_of_the_same_files_make_one_version(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    write_adapter(adapter_root / "newcomer/v1", fill=7.0)
    bodies = [("pirate", "pirate/v3"), ("newcomer", "newcomer/v1")] * 4

    responses = await asyncio.gather(*(register(client, n, p) for n, p in bodies))

    assert sorted(r.status_code for r in responses) == [200] * 6 + [201] * 2
    assert {r.json()["ref"] for r in responses} == {"pirate@3", "newcomer@1"}
    events = [e for e in await audit(client) if e["actor"] == "anonymous"]
    assert sorted((e["action"], e["adapter"], e["version"]) for e in events) == [
        ("register", "newcomer", 1),
        ("register", "pirate", 3),
    ]


def _v3(body: Body | None = None, **files: Any) -> Callable[[Path], Body]:
    """Write `pirate/v3` (`files`: options of `write_adapter`) and register it with `body`."""

    def make(root: Path) -> Body:
        write_adapter(root / "pirate/v3", **{"fill": 5.0, **files})
        return {"name": "pirate", "path": "pirate/v3", **(body or {})}

    return make


def _outside(path: str, link: bool = False) -> Callable[[Path], Body]:
    """An adapter beside the root, registered by `path` (through a link inside if `link`)."""

    def make(root: Path) -> Body:
        write_adapter(root.parent / "outside", fill=5.0)
        if link:
            (root / path).symlink_to(root.parent / "outside", target_is_directory=True)
        return {"name": "pirate", "path": path}

    return make


def _missing_weights(root: Path) -> Body:
    (root / "pirate/v3").mkdir()
    shutil.copy(root / "pirate/v1/adapter_config.json", root / "pirate/v3")
    return {"name": "pirate", "path": "pirate/v3"}


def _named(name: str) -> Callable[[Path], Body]:
    return lambda root: {"name": name, "path": "pirate/v1"}


OTHER_BASE = "meta-llama/Llama-3-8B"
# Each refusal: how to provoke it, the field it blames and what its message says.
REFUSED = {
    "wrong_sha256": (_v3({"sha256": "0" * 64}), "sha256", "sha256 mismatch"),
    "shapes_of_another_base": (_v3(base=BIGGER_BASE), "path", "trained on another base"),
    "base_model_field": (_v3({"base_model": OTHER_BASE}), "base_model", OTHER_BASE),
    "adapter_config_base_model": (_v3(base_model=OTHER_BASE), "path", OTHER_BASE),
    "rank_above_maximum": (_v3(rank=32), "path", "rank 32 is above"),
    "absolute_path": (lambda root: {"name": "pirate", "path": "/etc"}, "path", "relative"),
    "dotdot_traversal": (_outside("../outside"), "path", "'..'"),
    "symlink_escape": (_outside("pirate/v3", link=True), "path", "outside the adapter root"),
    "missing_weights": (_missing_weights, "path", "no adapter_model.safetensors"),
    "uppercase_name": (_named("Pirate!"), "name", "lowercase"),
    "double_dash_name": (_named("a--b"), "name", "no '--'"),
    "reserved_name": (_named("auto"), "name", "reserved"),
    "base_model_name": (_named("smollm2"), "name", "reserved"),
}


@pytest.mark.parametrize(("make", "param", "says"), REFUSED.values(), ids=REFUSED.keys())
async def test_refused_registration_is_a_400_audited_and_changes_nothing(
    client: httpx.AsyncClient,
    adapter_root: Path,
    fake_state: FakeEngineState,
    make: Callable[[Path], Body],
    param: str,
    says: str,
) -> None:
    body = make(adapter_root)
    before = await snapshot(client, fake_state)

    response = await client.post(ADAPTERS, json=body)

    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert says in error["message"]
    assert await snapshot(client, fake_state) == before
    last = (await audit(client))[-1]
    assert last["action"] == "register:failed" and last["adapter"] == body["name"]
    assert last["version"] is None and last["reason"] == error["message"]


async def test_malformed_json_body_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    before = await snapshot(client, fake_state)

    response = await client.post(
        ADAPTERS, content=b"{not json", headers={"content-type": "application/json"}
    )

    assert_error(response, 400)
    assert await snapshot(client, fake_state) == before


@pytest.mark.parametrize(
    ("url", "body", "param"),
    [
        (ADAPTERS, {"name": "pirate", "path": "pirate/v1", "colour": "red"}, "colour"),
        (f"{ADAPTERS}/pirate/versions/1/load", {"pinn": True}, "pinn"),
        (f"{ADAPTERS}/pirate/versions/1/retire", {"why": "old"}, "why"),
    ],
    ids=["register", "load", "retire"],
)
async def test_unknown_fields_in_admin_bodies_are_a_400_and_change_nothing(
    client: httpx.AsyncClient, fake_state: FakeEngineState, url: str, body: Body, param: str
) -> None:
    before = await snapshot(client, fake_state)

    response = await client.post(url, json=body)

    assert assert_error(response, 400)["param"] == param
    assert await snapshot(client, fake_state) == before


async def test_register_outcomes_are_counted(
    client: httpx.AsyncClient, adapter_root: Path, metrics: Metrics
) -> None:
    ok, error = register_count(metrics, "ok"), register_count(metrics, "error")
    write_adapter(adapter_root / "pirate/v3", fill=5.0)

    await register(client, "pirate", "pirate/v3")
    await register(client, "pirate", "/etc")

    assert register_count(metrics, "ok") == ok + 1
    assert register_count(metrics, "error") == error + 1


# -- admin keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (bearer("wrong-secret"), 401), (bearer(TENANT_KEY), 403)],
    ids=["no_key", "wrong_key", "tenant_key"],
)
async def test_admin_area_refuses_calls_without_the_admin_key(
    keyed_client: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    assert_error(await keyed_client.get(ADAPTERS, headers=headers), status)


async def test_admin_key_opens_the_admin_area(keyed_client: httpx.AsyncClient) -> None:
    response = await keyed_client.get(ADAPTERS, headers=bearer(ADMIN_KEY))

    assert response.status_code == 200, response.text
    assert {a["name"] for a in response.json()["data"]} == {"pirate", "french"}


async def test_tenant_key_serves_v1_and_a_missing_key_is_refused(
    keyed_client: httpx.AsyncClient,
) -> None:
    assert (await chat(keyed_client, "pirate", headers=bearer(TENANT_KEY))).status_code == 200
    assert_error(await chat(keyed_client, "pirate"), 401, "invalid_api_key")


async def test_register_with_a_tenant_key_is_refused_and_creates_nothing(
    keyed_client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    body = {"name": "pirate", "path": "pirate/v3"}

    response = await keyed_client.post(ADAPTERS, json=body, headers=bearer(TENANT_KEY))

    assert_error(response, 403, "permission_denied")
    adapter = await keyed_client.get(f"{ADAPTERS}/pirate", headers=bearer(ADMIN_KEY))
    assert [v["version"] for v in adapter.json()["versions"]] == [1, 2]
    events = await audit(keyed_client, "pirate", headers=bearer(ADMIN_KEY))
    assert all(e["actor"].startswith("system") for e in events)


async def test_admin_key_calls_are_audited_as_admin_and_the_named_person(
    keyed_client: httpx.AsyncClient,
) -> None:
    headers = {**bearer(ADMIN_KEY), "x-actor": "alice"}

    response = await act(keyed_client, "pirate@1", "retire", {"reason": "old"}, headers=headers)

    assert response.status_code == 200, response.text
    last = (await audit(keyed_client, "pirate", headers=headers))[-1]
    assert (last["actor"], last["action"], last["reason"]) == (
        "admin:alice",
        "state:retired",
        "old",
    )


# -- load, unload, pin, retire, delete ----------------------------------------------------


@BOTH_DATABASES
async def test_load_puts_the_version_into_the_engine_and_marks_it_ready(
    client: httpx.AsyncClient, fake_state: FakeEngineState, engine_url: str
) -> None:
    assert "pirate--v1" not in fake_state.loras

    response = await act(client, "pirate@1", "load")

    assert response.status_code == 200, response.text
    out = response.json()
    assert out["state"] == "ready" and out["resident_on"] == [engine_url]
    assert out["pinned"] is False
    assert "pirate--v1" in fake_state.loras
    assert (await version_of(client, "pirate@1"))["state"] == "ready"


async def test_load_with_pin_pins_and_unpin_and_pin_toggle_it(client: httpx.AsyncClient) -> None:
    loaded = await act(client, "pirate@1", "load", {"pin": True})
    unpinned = await act(client, "pirate@1", "unpin")
    pinned = await act(client, "pirate@1", "pin")

    assert loaded.json()["pinned"] is True
    assert unpinned.json()["pinned"] is False
    assert pinned.json()["pinned"] is True
    assert (await version_of(client, "pirate@1"))["pinned"] is True


async def test_unload_removes_the_version_from_the_engine_and_unpins_it(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await act(client, "pirate@1", "load", {"pin": True})

    response = await act(client, "pirate@1", "unload")

    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["state"], out["pinned"], out["resident_on"]) == ("registered", False, [])
    assert "pirate--v1" not in fake_state.loras


@BOTH_DATABASES
async def test_retired_version_is_unloaded_and_no_longer_served(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await act(client, "pirate@1", "load", {"pin": True})

    response = await act(client, "pirate@1", "retire", {"reason": "superseded"})

    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["pinned"]) == ("retired", False)
    assert "pirate--v1" not in fake_state.loras
    models = await model_ids(client)
    assert "pirate@1" not in models and {"pirate", "pirate@2"} <= models
    assert_error(await chat(client, "pirate@1"), 404, "model_not_found")
    assert "pirate--v1" not in fake_state.loras  # the refused request loaded nothing


async def test_retiring_the_stable_version_makes_the_name_fall_back_to_the_newest_servable(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    assert (await chat(client, "pirate")).headers["x-adapter"] == "pirate@1"
    assert (await act(client, "pirate@1", "retire")).status_code == 200

    response = await chat(client, "pirate")

    assert response.status_code == 200, response.text
    assert response.headers["x-adapter"] == "pirate@2"
    assert fake_state.received[-1]["model"] == "pirate--v2"


async def test_version_retired_while_serving_is_unloaded_once_its_requests_finish(
    settings: Settings, fake_state: FakeEngineState
) -> None:
    fake_state.delay_s = 0.3
    async with gateway(settings.model_copy(update={"registry_poll_s": 0.05}), Metrics()) as client:
        request = asyncio.create_task(chat(client, "pirate@1"))
        for _ in range(100):  # until the request is at the engine
            if fake_state.received:
                break
            await asyncio.sleep(0.01)

        retired = await act(client, "pirate@1", "retire")
        kept_while_busy = "pirate--v1" in fake_state.loras
        served = await request
        await asyncio.sleep(0.3)  # a few registry polls

    assert retired.status_code == 200, retired.text
    assert kept_while_busy and served.status_code == 200
    assert "pirate--v1" not in fake_state.loras


async def test_retiring_a_retired_version_is_a_conflict(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await act(client, "pirate@1", "retire")
    before = await snapshot(client, fake_state)
    events = len(await audit(client))

    response = await act(client, "pirate@1", "retire")

    assert_error(response, 409, "conflict")
    assert await snapshot(client, fake_state) == before
    assert len(await audit(client)) == events


async def test_deleting_a_servable_version_is_a_conflict_and_changes_nothing(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await act(client, "pirate@1", "load")
    before = await snapshot(client, fake_state)

    response = await client.delete(f"{ADAPTERS}/pirate/versions/1")

    assert_error(response, 409, "conflict")
    assert await snapshot(client, fake_state) == before


@BOTH_DATABASES
async def test_deleting_a_retired_version_removes_it_and_is_audited(
    client: httpx.AsyncClient,
) -> None:
    await act(client, "pirate@1", "retire")
    url = f"{ADAPTERS}/pirate/versions/1"

    response = await client.request("DELETE", url, json={"reason": "cleanup"})

    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": True, "name": "pirate", "version": 1}
    assert_error(await client.get(url), 404, "adapter_not_found")
    versions = (await client.get(f"{ADAPTERS}/pirate")).json()["versions"]
    assert [v["version"] for v in versions] == [2]
    last = (await audit(client, "pirate"))[-1]
    assert (last["action"], last["version"], last["reason"]) == ("delete", 1, "cleanup")


@BOTH_DATABASES
async def test_a_deleted_version_number_is_never_given_to_other_files(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    await act(client, "french@1", "retire")
    await client.delete(f"{ADAPTERS}/french/versions/1")  # the adapter's only version
    write_adapter(adapter_root / "french/v2", fill=8.0)

    response = await register(client, "french", "french/v2")

    assert (response.status_code, response.json()["version"]) == (201, 2)
    assert_error(await client.get(f"{ADAPTERS}/french/versions/1"), 404, "adapter_not_found")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", f"{ADAPTERS}/nope"),
        ("GET", f"{ADAPTERS}/pirate/versions/9"),
        ("POST", f"{ADAPTERS}/nope/versions/1/load"),
        ("POST", f"{ADAPTERS}/pirate/versions/9/unload"),
        ("POST", f"{ADAPTERS}/pirate/versions/9/pin"),
        ("POST", f"{ADAPTERS}/pirate/versions/9/retire"),
        ("DELETE", f"{ADAPTERS}/pirate/versions/9"),
    ],
)
async def test_unknown_adapter_or_version_is_a_404(
    client: httpx.AsyncClient, method: str, url: str
) -> None:
    assert_error(await client.request(method, url), 404, "adapter_not_found")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_non_numeric_version_is_a_400(client: httpx.AsyncClient, method: str) -> None:
    suffix = "/load" if method == "POST" else ""
    response = await client.request(method, f"{ADAPTERS}/pirate/versions/abc{suffix}")

    assert assert_error(response, 400)["param"] == "path.version"


# -- the audit trail ----------------------------------------------------------------------


@BOTH_DATABASES
async def test_every_change_is_audited_with_actor_and_reason(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    headers = {"x-actor": "alice"}
    await client.post(
        ADAPTERS, json={"name": "pirate", "path": "pirate/v3", "reason": "r0"}, headers=headers
    )
    await act(client, "pirate@3", "load", {"pin": True, "reason": "r1"}, headers=headers)
    for step, action in enumerate(["unpin", "pin", "unload", "retire"], start=2):
        await act(client, "pirate@3", action, {"reason": f"r{step}"}, headers=headers)
    url = f"{ADAPTERS}/pirate/versions/3"
    await client.request("DELETE", url, json={"reason": "r6"}, headers=headers)

    events = [e for e in await audit(client, "pirate") if e["version"] == 3]

    assert {e["actor"] for e in events} == {"anonymous:alice"}
    assert [(e["action"], e["reason"]) for e in events] == [
        ("register", "r0"),
        ("state:loading", "r1"),
        ("pin", "r1"),
        ("state:ready", "r1"),
        ("unpin", "r2"),
        ("pin", "r3"),
        ("unpin", "r4"),
        ("state:registered", "r4"),
        ("state:retired", "r5"),
        ("delete", "r6"),
    ]


# -- files, crashes and restarts ----------------------------------------------------------


@BOTH_DATABASES
@pytest.mark.parametrize("trigger", ["admin_load", "chat"])
async def test_version_whose_files_changed_is_refused_at_load_and_marked_failed(
    client: httpx.AsyncClient,
    adapter_root: Path,
    tmp_path: Path,
    fake_state: FakeEngineState,
    trigger: str,
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    await register(client, "pirate", "pirate/v3")
    # Loaded once (its files checked) and unloaded, so the next load checks them again.
    assert (await act(client, "pirate@3", "load")).status_code == 200
    assert (await act(client, "pirate@3", "unload")).status_code == 200
    weights = "adapter_model.safetensors"
    write_adapter(tmp_path / "other", fill=9.0)
    shutil.copyfile(tmp_path / "other" / weights, adapter_root / "pirate/v3" / weights)

    if trigger == "admin_load":
        response = await act(client, "pirate@3", "load", {"pin": True})
    else:
        response = await chat(client, "pirate@3")

    assert response.status_code >= 400, response.text
    assert "pirate--v3" not in fake_state.loras
    version = await version_of(client, "pirate@3")
    assert (version["state"], version["pinned"]) == ("failed", False)
    assert "pirate@3" not in await model_ids(client)
    failed = [e for e in await audit(client, "pirate") if e["action"] == "state:failed"]
    assert [(e["version"], e["actor"]) for e in failed] == [(3, "system:loader")]
    assert "sha256 mismatch" in failed[0]["reason"]


@pytest.mark.parametrize("gone", ["weights", "directory"])
async def test_version_whose_files_vanished_is_a_502_and_marked_failed(
    client: httpx.AsyncClient, adapter_root: Path, fake_state: FakeEngineState, gone: str
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    await register(client, "pirate", "pirate/v3")
    if gone == "weights":
        (adapter_root / "pirate/v3" / "adapter_model.safetensors").unlink()
    else:
        shutil.rmtree(adapter_root / "pirate/v3")

    response = await chat(client, "pirate@3")

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "adapter_load_failed"
    assert "pirate--v3" not in fake_state.loras
    assert (await version_of(client, "pirate@3"))["state"] == "failed"
    # `pirate` still serves its stable version, the first registered.
    assert (await chat(client, "pirate")).headers["x-adapter"] == "pirate@1"


@BOTH_DATABASES
async def test_versions_states_and_pins_survive_a_restart(
    settings: Settings, adapter_root: Path, fake_state: FakeEngineState
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    async with gateway(settings, Metrics()) as client:
        await register(client, "pirate", "pirate/v3")
        assert (await act(client, "pirate@3", "load", {"pin": True})).status_code == 200
    fake_state.loras.clear()  # the engine restarted too

    async with gateway(settings, Metrics()) as client:
        version = await version_of(client, "pirate@3")
        versions = (await client.get(f"{ADAPTERS}/pirate")).json()["versions"]
        registered = [e for e in await audit(client, "pirate") if e["action"] == "register"]

    assert (version["state"], version["pinned"]) == ("ready", True)
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [e["version"] for e in registered] == [1, 2, 3]
    assert "pirate--v3" in fake_state.loras  # the pinned version is restored at start


@BOTH_DATABASES
async def test_version_left_loading_by_a_crash_is_registered_again_at_start(
    settings: Settings, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    async with gateway(settings, Metrics()) as client:
        await register(client, "pirate", "pirate/v3")
    # The gateway died between marking the version `loading` and finishing the load.
    database = make_engine(settings.resolved_database_url)
    Registry(session_factory(database)).set_state("pirate", 3, VersionState.LOADING, actor="t")
    database.dispose()

    async with gateway(settings, Metrics()) as client:
        recovered = await version_of(client, "pirate@3")
        last = (await audit(client, "pirate"))[-1]
        served = await chat(client, "pirate@3")
        after = await version_of(client, "pirate@3")

    assert recovered["state"] == "registered"
    assert (last["action"], last["actor"], last["version"]) == ("state:registered", "system", 3)
    assert served.status_code == 200, served.text
    assert after["state"] == "ready"


@BOTH_DATABASES
async def test_load_that_cannot_reach_the_engine_leaves_the_version_as_it_was(
    settings: Settings,
) -> None:
    engine = serve_in_loop(create_fake_vllm(FakeEngineState(base_model="smollm2")))
    url, stopped = await engine.__aenter__(), False
    try:
        async with gateway(settings.model_copy(update={"upstream_urls": [url]}), Metrics()) as c:
            # The engine dies after its health check: the pool still takes it for healthy.
            await engine.__aexit__(None, None, None)
            stopped = True
            response = await act(c, "pirate@1", "load", {"pin": True})
            version = await version_of(c, "pirate@1")
    finally:
        if not stopped:
            await engine.__aexit__(None, None, None)

    assert_error(response, 503)
    assert (version["state"], version["pinned"]) == ("registered", False)
