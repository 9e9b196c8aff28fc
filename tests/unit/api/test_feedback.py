"""`/v1/feedback` through the whole app with the fake engine: a rating lands on the answer's
version and variant, sending again replaces it (history kept, aggregates moved by the
difference), and every refusal (another tenant's id, unknown id, bad rating, malformed JSON,
rate limit) is a clear 4xx that changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from gateway.api.auth import hash_key
from gateway.app import create_app
from gateway.config import Settings, TenantKey
from gateway.metrics import Metrics
from gateway.registry.schema import FeedbackRow
from gateway.testing.adapters import TINY_BASE

CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "Ahoy?"}]}
ACME, GLOBEX, LIMITED = "key-acme", "key-globex", "key-limited"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.tenant_keys = [
        TenantKey(name="acme", key_sha256=hash_key(ACME)),
        TenantKey(name="globex", key_sha256=hash_key(GLOBEX)),
        TenantKey(name="limited", key_sha256=hash_key(LIMITED), rate_per_minute=0.01, burst=3),
    ]
    settings.admin_key_sha256 = hash_key("key-admin")
    settings.quality.max_comment_chars = 1000
    return settings


@pytest.fixture
async def app(settings: Settings, metrics: Metrics) -> AsyncIterator[FastAPI]:
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        yield application


async def answer(client: httpx.AsyncClient, key: str = ACME, **body: Any) -> str:
    response = await client.post("/v1/chat/completions", json={**CHAT, **body}, headers=auth(key))
    assert response.status_code == 200, response.text
    answer_id: str = response.json()["id"]
    return answer_id


async def rate(client: httpx.AsyncClient, key: str = ACME, **body: Any) -> httpx.Response:
    return await client.post("/v1/feedback", json=body, headers=auth(key))


def stored(app: FastAPI) -> list[tuple[Any, ...]]:
    """Everything feedback can change: the ratings and the aggregates."""
    store = app.state.quality_store
    with store._sessions() as session:
        ratings = session.execute(
            select(FeedbackRow.response_id, FeedbackRow.value, FeedbackRow.history)
        ).all()
    return [tuple(r) for r in ratings]


async def test_a_rating_is_stored_and_sending_again_replaces_it_with_history(
    app: FastAPI, client: httpx.AsyncClient, metrics: Metrics
) -> None:
    answer_id = await answer(client)
    assert answer_id.startswith("chatcmpl-")
    first = await rate(client, response_id=answer_id, thumbs="up", tags=["helpful"])
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["created"] is True and out["value"] == 1.0 and out["route"] == "pirate"
    again = await rate(client, response_id=answer_id, score=2, comment="meh on reflection")
    assert again.status_code == 200
    out = again.json()
    assert out["created"] is False and out["value"] == 0.25 and out["rating"] == {"score": 2}
    assert [h["rating"] for h in out["history"]] == [{"thumbs": "up"}]
    # The bare request id names the same response.
    bare = answer_id.removeprefix("chatcmpl-")
    got = await client.get(f"/v1/feedback/{bare}", headers=auth(ACME))
    assert got.status_code == 200 and got.json()["comment"] == "meh on reflection"
    assert len(stored(app)) == 1
    labels = {"route": "pirate", "variant": "none", "rating": "up"}
    assert metrics.registry.get_sample_value("gateway_feedback_total", labels) == 1


async def test_a_value_rating_and_a_completion_id_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": "pirate", "prompt": "Arr"}, headers=auth(ACME)
    )
    answer_id = response.json()["id"]
    assert answer_id.startswith("cmpl-")
    rated = await rate(client, response_id=answer_id, value=0.8)
    assert rated.status_code == 200 and rated.json()["value"] == 0.8


async def test_another_tenant_s_answer_and_unknown_ids_are_404s_that_change_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    answer_id = await answer(client, ACME)
    await rate(client, ACME, response_id=answer_id, thumbs="up")
    before = stored(app)
    for key, response_id in [
        (GLOBEX, answer_id),
        (GLOBEX, answer_id.removeprefix("chatcmpl-")),
        (ACME, "chatcmpl-never-answered"),
        ("key-admin", answer_id),
    ]:
        refused = await rate(client, key, response_id=response_id, thumbs="down")
        assert refused.status_code == 404, (key, refused.text)
        assert refused.json()["error"]["code"] == "response_not_found"
        read = await client.get(f"/v1/feedback/{response_id}", headers=auth(key))
        assert read.status_code == 404
    assert stored(app) == before


async def test_the_same_request_id_from_two_tenants_is_two_responses(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    headers = {"x-request-id": "shared-id-1"}
    for key in (ACME, GLOBEX):
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={**auth(key), **headers}
        )
        assert response.status_code == 200
    assert (await rate(client, ACME, response_id="shared-id-1", thumbs="up")).status_code == 200
    assert (await rate(client, GLOBEX, response_id="shared-id-1", score=1)).status_code == 200
    mine = await client.get("/v1/feedback/shared-id-1", headers=auth(ACME))
    assert mine.json()["rating"] == {"thumbs": "up"}


@pytest.mark.parametrize(
    "body",
    [
        {"thumbs": "sideways"},
        {"score": 6},
        {"score": 0},
        {"score": 4.5},
        {"score": True},
        {"value": 1.5},
        {"value": -0.1},
        {},
        {"thumbs": "up", "score": 5},
        {"thumbs": "up", "extra": 1},
        {"thumbs": "up", "tags": ["a b"]},
        {"thumbs": "up", "tags": [f"t{i}" for i in range(17)]},
        {"thumbs": "up", "comment": "x" * 1001},
        {"thumbs": "up", "response_id": "has spaces"},
    ],
)
async def test_bad_ratings_are_400s_that_change_nothing(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    answer_id = await answer(client)
    before = stored(app)
    response = await rate(client, **{"response_id": answer_id, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert stored(app) == before


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[]", b"null", b'{"response_id": "x", "value": NaN}', b"\xff\xfe"]
)
async def test_malformed_bodies_are_400s(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/v1/feedback", content=raw, headers={**auth(ACME), "content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


async def test_the_tenant_s_rate_limit_applies_and_the_refusal_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    answer_id = await answer(client, LIMITED)  # 1 of the burst of 3
    assert (await rate(client, LIMITED, response_id=answer_id, thumbs="up")).status_code == 200
    assert (await rate(client, LIMITED, response_id=answer_id, score=5)).status_code == 200
    before = stored(app)
    limited = await rate(client, LIMITED, response_id=answer_id, thumbs="down")
    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert stored(app) == before


async def test_a_rating_right_after_the_answer_finds_it_in_the_writer_s_buffer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    answer_id = await answer(client)
    assert app.state.responses.pending == 1  # not written yet
    assert (await rate(client, response_id=answer_id, thumbs="up")).status_code == 200


async def test_a_canary_answer_s_rating_lands_on_the_candidate(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    admin = auth("key-admin")
    plan = {"canary": [{"weight": 100}]}
    started = await client.post(
        "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": plan}, headers=admin
    )
    assert started.status_code == 201, started.text
    rollout_id = started.json()["id"]
    assert (await client.post("/admin/rollouts/pirate/advance", headers=admin)).status_code == 200
    response = await client.post("/v1/chat/completions", json=CHAT, headers=auth(ACME))
    assert response.headers["x-variant"] == "canary"
    rated = await rate(client, response_id=response.json()["id"], thumbs="down")
    assert rated.json()["variant"] == "canary" and rated.json()["version"] == 2
    store = app.state.quality_store
    totals = store.aggregates(rollout_id)[("canary", "satisfaction")]
    assert (totals.count, totals.total, totals.fails) == (1, 0.0, 1)
    await rate(client, response_id=response.json()["id"], thumbs="up")
    totals = store.aggregates(rollout_id)[("canary", "satisfaction")]
    assert (totals.count, totals.total, totals.passes, totals.fails) == (1, 1.0, 1, 0)
    assert store.aggregates(rollout_id) == store.recount(rollout_id)
    assert store.reservoir(rollout_id, "canary", "satisfaction") == [1.0]
    with store._sessions() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackRow)) == 1


async def test_a_tenant_cannot_hide_its_traffic_behind_the_judge_header(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={**auth(ACME), "x-lora-gateway-judge": "1"},
    )
    assert response.status_code == 200
    # Logged like any answer: it can be rated.
    rated = await rate(client, response_id=response.json()["id"], thumbs="up")
    assert rated.status_code == 200
