"""The webhook admin API through the whole app: a subscription's secret is shown once, bad
subscriptions are refused with nothing kept, the test endpoint reports what the receiver
answered, and the app's own worker delivers rollout events (or gives up on them, shown as
dead) to a real loopback receiver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from standardwebhooks import Webhook

from gateway.config import HookSettings, Settings
from gateway.hooks.events import EVENT_NAMES, HookEvent
from gateway.hooks.outbox import Outbox
from gateway.metrics import Metrics
from gateway.registry.database import make_engine, session_factory
from gateway.testing.receiver import Behaviour, WebhookReceiver
from gateway.testing.server import serve_in_loop

pytestmark = pytest.mark.timeout(60)
GATEWAY_PORT = 8000


@pytest.fixture
def settings(engine_url: str, adapter_root: Path, tmp_path: Path) -> Settings:
    return Settings(
        base_model_name="smollm2",
        upstream_urls=[engine_url],
        adapter_root=adapter_root,
        state_dir=tmp_path / "state",
        max_body_bytes=16_384,
        port=GATEWAY_PORT,
        hooks=HookSettings(poll_s=0.05, attempt_timeout_s=2.0, max_backoff_s=0.2),
    )


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    app = WebhookReceiver()
    async with serve_in_loop(app) as url:
        yield app, url


async def _subscribe(client: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/admin/hooks", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _eventually_status(
    client: httpx.AsyncClient, hook_id: int, status: str, timeout_s: float = 5.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            response = await client.get(
                f"/admin/hooks/{hook_id}/messages", params={"status": status}
            )
            found = response.json()["data"]
            if found:
                message: dict[str, Any] = found[0]
                return message
            await asyncio.sleep(0.05)


async def test_a_subscription_shows_its_secret_once(client: httpx.AsyncClient) -> None:
    created = await _subscribe(
        client,
        "http://127.0.0.1:9/hooks",
        events=["rollout.promoted", "rollout.rolled_back"],
        description="training pipeline",
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["events"] == ["rollout.promoted", "rollout.rolled_back"]
    assert created["active"] is True and created["created_by"]
    listed = await client.get("/admin/hooks")
    one = await client.get(f"/admin/hooks/{created['id']}")
    for response in (listed, one):
        assert response.status_code == 200
        assert secret not in response.text and secret.removeprefix("whsec_") not in response.text
    [shown] = listed.json()["data"]
    assert "secret" not in shown and "secret" not in one.json()
    assert shown["secret_fingerprint"] == created["secret_fingerprint"]
    assert len(shown["secret_fingerprint"]) == 8


async def test_a_given_secret_is_kept(client: httpx.AsyncClient) -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    created = await _subscribe(client, "http://127.0.0.1:9/hooks", secret=secret)
    assert created["secret"] == secret


@pytest.mark.parametrize(
    ("body", "param", "code", "says"),
    [
        ({"url": "ftp://example.com/hooks"}, "url", "invalid_hook_url", "http:// or https://"),
        ({"url": "http:///hooks"}, "url", "invalid_hook_url", "no host"),
        ({"url": "http://u:p@example.com/"}, "url", "invalid_hook_url", "user info"),
        ({"url": f"http://127.0.0.1:{GATEWAY_PORT}/x"}, "url", "invalid_hook_url", "itself"),
        ({"url": f"http://localhost:{GATEWAY_PORT}/x"}, "url", "invalid_hook_url", "itself"),
        ({"url": "http://e.com/" + "a" * 2100}, "url", "invalid_hook_url", "longer than 2048"),
        (
            {"url": "http://127.0.0.1:9/", "events": ["rollout.started", "rollout.nope"]},
            "events",
            "unknown_event",
            "known events: " + ", ".join(EVENT_NAMES),
        ),
        ({"url": "http://127.0.0.1:9/", "secret": "hunter2"}, "secret", "invalid_secret", "whsec_"),
        ({"url": "http://127.0.0.1:9/", "color": "red"}, "color", None, "Extra inputs"),
        ({"url": "http://127.0.0.1:9/", "events": ["rollout.started"] * 21}, "events", None, "20"),
        ({"url": "http://127.0.0.1:9/", "description": "d" * 1025}, "description", None, "1024"),
        ({"events": []}, "url", None, "required"),
    ],
)
async def test_a_bad_subscription_is_refused_and_nothing_is_kept(
    client: httpx.AsyncClient, body: dict[str, Any], param: str, code: str | None, says: str
) -> None:
    response = await client.post("/admin/hooks", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert says in error["message"]
    assert (await client.get("/admin/hooks", params={"all": "true"})).json()["data"] == []


async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/admin/hooks", content=b"{url:", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/hooks/404"),
        ("DELETE", "/admin/hooks/404"),
        ("GET", "/admin/hooks/404/messages"),
        ("POST", "/admin/hooks/404/test"),
    ],
)
async def test_an_unknown_subscription_is_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "hook_not_found"


async def test_the_test_endpoint_reports_what_the_receiver_answered(
    client: httpx.AsyncClient, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, url = receiver
    good = await _subscribe(client, url + "/good")
    app.expect("/good", good["secret"], Behaviour(status=204))
    bad = await _subscribe(client, url + "/bad")
    app.expect("/bad", bad["secret"], Behaviour(status=503))

    answer = (await client.post(f"/admin/hooks/{good['id']}/test")).json()
    assert answer["delivered"] is True and answer["status"] == 204
    assert answer["outcome"] == "delivered" and answer["latency_ms"] > 0
    [got] = app.delivered("/good")
    assert got.verified and got.payload["type"] == "hook.test"
    assert got.webhook_id == answer["message_id"]
    Webhook(good["secret"]).verify(got.body, got.headers)

    answer = (await client.post(f"/admin/hooks/{bad['id']}/test")).json()
    assert answer["delivered"] is False and answer["status"] == 503
    assert answer["outcome"] == "retry" and answer["error"] == "HTTP 503: answer 503"
    # Only the subscription tested got a message.
    assert [r.path for r in app.received] == ["/good", "/bad"]


async def test_rollout_events_reach_subscribers_and_undeliverable_ones_show_as_dead(
    app: FastAPI,
    client: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, str],
    settings: Settings,
) -> None:
    recv, url = receiver
    ok = await _subscribe(client, url + "/ok", events=["rollout.promoted"])
    recv.expect("/ok", ok["secret"])
    down = await _subscribe(client, url + "/down")
    recv.expect("/down", down["secret"], Behaviour(status=500))
    outbox: Outbox = app.state.outbox
    sessions = session_factory(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        rows = outbox.enqueue(session, HookEvent.ROLLOUT_PROMOTED, {"route": "pirate", "to": 2})
        for row in rows:
            if row.subscription_id == down["id"]:
                row.deadline_at = datetime.now(UTC) + timedelta(seconds=0.3)

    delivered = await _eventually_status(client, ok["id"], "delivered")
    assert delivered["event"] == "rollout.promoted"
    assert [a["status"] for a in delivered["attempts"]] == [200]
    [got] = recv.delivered("/ok")
    assert got.verified and got.payload["data"] == {"route": "pirate", "to": 2}

    dead = await _eventually_status(client, down["id"], "dead")
    assert dead["last_status"] == 500 and dead["next_attempt_at"] is None
    assert dead["attempts"] and all(a["status"] == 500 for a in dead["attempts"])
    assert all(a["latency_ms"] > 0 and a["error"] for a in dead["attempts"])
    pending = await client.get(f"/admin/hooks/{down['id']}/messages", params={"status": "pending"})
    assert pending.json()["data"] == []
    refused = await client.get(f"/admin/hooks/{down['id']}/messages", params={"status": "lost"})
    assert refused.status_code == 400


async def test_a_removed_subscription_gets_nothing_more(
    client: httpx.AsyncClient, receiver: tuple[WebhookReceiver, str]
) -> None:
    _, url = receiver
    created = await _subscribe(client, url + "/gone")
    removed = await client.delete(f"/admin/hooks/{created['id']}")
    assert removed.status_code == 200
    assert removed.json()["active"] is False and removed.json()["secret_fingerprint"] is None
    assert (await client.get("/admin/hooks")).json()["data"] == []
    [listed] = (await client.get("/admin/hooks", params={"all": "true"})).json()["data"]
    assert listed["id"] == created["id"]
    test = await client.post(f"/admin/hooks/{created['id']}/test")
    assert test.status_code == 409


async def test_secrets_appear_in_no_log_and_no_metric(
    client: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, str],
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app, url = receiver
    created = await _subscribe(client, url + "/r")
    app.expect("/r", created["secret"], Behaviour(status=500))
    await client.post(f"/admin/hooks/{created['id']}/test")
    await client.get("/admin/hooks")
    key = created["secret"].removeprefix("whsec_")
    assert key not in caplog.text
    assert key not in generate_latest(metrics.registry).decode()
