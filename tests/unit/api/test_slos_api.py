"""The SLO file through the whole app with the fake engine: none at first, seeded, read,
replaced whole (a bad one refused with every problem listed, the one in use kept), admin
only, and followed by another gateway on the same registry."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from gateway.api.auth import hash_key
from gateway.app import create_app
from gateway.config import Settings, TenantKey
from gateway.metrics import Metrics
from gateway.registry.schema import AuditEvent
from gateway.testing.adapters import TINY_BASE
from gateway.testing.server import app_client

PIRATE = """\
# the pirate route's SLOs; the defaults cover the others
defaults:
  signals:
    - {signal: error_rate, critical: true, margin: 0.02}
routes:
  pirate:
    signals:
      - {signal: error_rate, critical: true, margin: 0.02, ceiling: {value: 0.5}}
      - {signal: verifier_pass, scorer: pirate_voice, critical: true, margin: -0.1}
      - {signal: reward_mean, margin: "-10%"}
"""
BAD = """
routes:
  pirate:
    signals:
      - {signal: telepathy, margin: 0}
      - {signal: verifier_pass, margin: -0.1}
      - {signal: error_rate, margin: "+5%", min: 0.9, max: 0.1}
      - {signal: reward_mean, margin: 0.1, colour: red}
"""
BAD_PLACES = (
    "routes.pirate.signals[0].signal",
    "routes.pirate.signals[1].scorer",
    "routes.pirate.signals[2].margin",
    "routes.pirate.signals[2]: impossible bounds",
    "routes.pirate.signals[3].colour",
)
ADMIN_KEY = "lgw-admin-secret"
TENANT_KEY = "lgw-tenant-secret"


async def put(client: httpx.AsyncClient, source: str, **params: Any) -> httpx.Response:
    return await client.put(
        "/admin/slos",
        content=source,
        params=params,
        headers={"content-type": "application/yaml"},
    )


async def actions(client: httpx.AsyncClient) -> list[str]:
    audit = (await client.get("/admin/audit", params={"limit": 1000})).json()["data"]
    return [event["action"] for event in audit]


async def test_no_slo_file_is_a_404_in_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/slos")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "No SLO file is in use.",
            "type": "invalid_request_error",
            "param": "slos",
            "code": "not_found",
        }
    }


async def test_a_file_put_is_stored_audited_and_shown(
    app: FastAPI, client: httpx.AsyncClient, metrics: Metrics
) -> None:
    response = await put(client, PIRATE, reason="first SLOs")
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["stored"] is True and out["id"] > 0 and len(out["sha256"]) == 64
    assert out["created_by"] == "anonymous" and out["created_at"]  # open mode: no key
    assert out["defaults"] is True and out["source"] == PIRATE
    assert out["routes"] == {
        "pirate": [
            {"name": "error_rate", "critical": True},
            {"name": "verifier_pass:pirate_voice", "critical": True},
            {"name": "reward_mean:reward", "critical": False},
        ]
    }
    assert (await client.get("/admin/slos")).json() == out
    assert app.state.slos.for_route("cowboy") is app.state.slos.active.file.defaults
    with app.state.quality_store._sessions() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "slos:replace")).one()
    assert event.reason == "first SLOs" and event.detail == {
        "file": out["id"],
        "sha256": out["sha256"],
        "routes": {"pirate": ["error_rate", "verifier_pass:pirate_voice", "reward_mean:reward"]},
    }
    labels = {"operation": "slos", "outcome": "ok"}
    assert metrics.registry.get_sample_value("gateway_registry_operations_total", labels) == 1


async def test_json_is_accepted_too(client: httpx.AsyncClient) -> None:
    body = {"defaults": {"signals": [{"signal": "latency_p95", "margin": "+25%"}]}}
    response = await client.put("/admin/slos", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["routes"] == {} and response.json()["defaults"] is True


async def test_a_dry_run_checks_without_storing(client: httpx.AsyncClient) -> None:
    checked = await put(client, PIRATE, dry_run="true")
    assert checked.status_code == 200, checked.text
    assert checked.json()["stored"] is False and checked.json()["id"] == 0
    assert (await client.get("/admin/slos")).status_code == 404
    assert "slos:replace" not in await actions(client)


async def test_a_bad_file_lists_every_problem_and_changes_nothing(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    assert (await put(client, PIRATE)).status_code == 200
    before = (await client.get("/admin/slos")).json()
    response = await put(client, BAD, reason="oops")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_slos",
        "slos",
    )
    for place in BAD_PLACES:
        assert place in error["message"], (place, error["message"])
    assert (await client.get("/admin/slos")).json() == before
    assert (await actions(client)).count("slos:refused") == 1
    labels = {"operation": "slos", "outcome": "refused"}
    assert metrics.registry.get_sample_value("gateway_registry_operations_total", labels) == 1


async def test_a_bad_dry_run_is_refused_without_an_audit_event(client: httpx.AsyncClient) -> None:
    response = await put(client, BAD, dry_run="true")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_slos"
    assert "slos:refused" not in await actions(client)


async def test_an_empty_body_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.put("/admin/slos", content=b"  ")
    assert response.status_code == 400 and response.json()["error"]["param"] == "slos"


async def test_the_demo_seed_is_stored_once(settings: Settings, metrics: Metrics) -> None:
    settings.analysis.slos = "demo"
    async with app_client(settings, metrics, TINY_BASE) as client:
        out = (await client.get("/admin/slos")).json()
        assert out["created_by"] == "gateway:seed" and out["stored"]
        assert list(out["routes"]) == ["pirate", "french", "shout", "cowboy"]
        assert await put(client, PIRATE) is not None
    # A registry that holds a file keeps it: the seed is for an empty one only.
    async with app_client(settings, Metrics(), TINY_BASE) as client:
        again = (await client.get("/admin/slos")).json()
        assert again["source"] == PIRATE and again["id"] == out["id"] + 1


async def test_a_missing_seed_file_leaves_no_slos(settings: Settings, metrics: Metrics) -> None:
    settings.analysis.slos = str(settings.state_dir / "missing.yaml")
    async with app_client(settings, metrics, TINY_BASE) as client:
        assert (await client.get("/admin/slos")).status_code == 404


async def test_only_the_admin_key_reads_and_replaces_slos(
    settings: Settings, metrics: Metrics
) -> None:
    tenant = TenantKey(name="alice", key_sha256=hash_key(TENANT_KEY))
    keyed = settings.model_copy(
        update={"admin_key_sha256": hash_key(ADMIN_KEY), "tenant_keys": [tenant]}
    )
    as_tenant = {"authorization": f"Bearer {TENANT_KEY}"}
    as_admin = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/yaml"}
    async with app_client(keyed, metrics, TINY_BASE) as client:
        for response in (
            await client.get("/admin/slos", headers=as_tenant),
            await client.put("/admin/slos", content=PIRATE, headers=as_tenant),
        ):
            assert response.status_code == 403
            assert response.json()["error"]["type"] == "permission_error"
        assert (await client.get("/admin/slos")).status_code == 401
        stored = await client.put("/admin/slos", content=PIRATE, headers=as_admin)
        assert stored.status_code == 200, stored.text
        assert (await client.get("/admin/slos", headers=as_admin)).json()["id"] == stored.json()[
            "id"
        ]


async def test_another_gateway_on_the_registry_follows_a_replacement(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    other = create_app(settings, metrics=Metrics(), base_info=TINY_BASE)
    async with other.router.lifespan_context(other):
        assert other.state.slos.active is None
        stored = (await put(client, PIRATE)).json()
        await other.state.slos.refresh()
        active = other.state.slos.active
        assert (active.id, active.sha256) == (stored["id"], stored["sha256"])
        assert other.state.slos.for_route("pirate").signals[1].name == "verifier_pass:pirate_voice"
        # A refused file is never stored, so there is nothing new to follow.
        assert (await put(client, BAD)).status_code == 400
        await other.state.slos.refresh()
        assert other.state.slos.active.id == stored["id"]
