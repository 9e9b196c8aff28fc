"""The response log through the whole app with the fake engine: one record per answered
request (tokens, latency, time to first token, variant), text kept per the setting, the
usage event a stream needs, a full buffer that drops and counts, retries after a failed
write, retention, and `/admin/usage`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.registry.schema import ResponseRow, utcnow
from gateway.testing.fake_vllm import FakeEngineState

CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "Where is the treasure?"}]}


def rows(app: FastAPI) -> list[ResponseRow]:
    store = app.state.quality_store
    with store._sessions() as session:
        return list(session.scalars(select(ResponseRow).order_by(ResponseRow.id)).all())


def events(body: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in body.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.fixture
def keep_all(settings: Settings) -> Iterator[Settings]:
    settings.quality.keep_text = "all"
    settings.quality.max_text_chars = 300
    yield settings


async def test_a_plain_answer_gets_one_record_with_its_tokens_and_latency(
    app: FastAPI, client: httpx.AsyncClient, metrics: Metrics
) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    await app.state.responses.flush()
    [row] = rows(app)
    assert row.request_id == response.headers["x-request-id"]
    assert response.json()["id"] == f"chatcmpl-{row.request_id}"
    assert (row.tenant, row.route, row.version, row.status) == ("anonymous", "pirate", 1, 200)
    assert (row.prompt_tokens, row.completion_tokens) == (3, 5)
    assert row.latency_ms > 0 and row.ttft_ms is None and not row.stream
    assert row.variant is None and row.rollout_id is None
    # The default keeps text only for sampled requests (1%): this one was very likely not.
    labels = {"tenant": "anonymous", "adapter": "pirate", "kind": "completion"}
    assert metrics.registry.get_sample_value("gateway_tokens_total", labels) == 5


async def test_a_stream_gets_its_usage_from_an_event_the_client_never_sees(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.stream_chunks = 4
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    got = events(response.text)
    assert len(got) == 4 and all(e["choices"] for e in got), got
    assert "usage" not in response.text
    assert fake_state.received[-1]["stream_options"] == {"include_usage": True}
    await app.state.responses.flush()
    [row] = rows(app)
    assert row.stream and row.completion_tokens == 4 and row.prompt_tokens == 3
    assert row.ttft_ms is not None and 0 < row.ttft_ms <= row.latency_ms


async def test_a_stream_that_asked_for_usage_gets_the_usage_event(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    last = events(response.text)[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    await app.state.responses.flush()
    assert rows(app)[0].completion_tokens == 3


async def test_text_is_kept_bounded_when_the_setting_says_all(
    keep_all: Settings, app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.answer = "Arr " * 200
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/completions", json={"model": "smollm2", "prompt": "Once upon"})
    await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await app.state.responses.flush()
    chat, completion, streamed = rows(app)
    assert chat.prompt_text == "user: Where is the treasure?"
    assert chat.answer_text == ("Arr " * 200)[:300]
    assert (completion.route, completion.version) == ("smollm2", None)
    assert completion.prompt_text == "Once upon" and completion.answer_text is not None
    assert streamed.answer_text == "tok0 tok1 tok2 "


async def test_no_text_is_kept_when_the_setting_says_off(
    settings: Settings, app: FastAPI, client: httpx.AsyncClient
) -> None:
    settings.quality.keep_text = "off"
    app.state.responses.score_rate = lambda route: 1.0  # even when every request is scored
    await client.post("/v1/chat/completions", json=CHAT)
    await app.state.responses.flush()
    [row] = rows(app)
    assert row.prompt_text is None and row.answer_text is None and row.completion_tokens == 5


async def test_failed_requests_are_logged_with_their_status(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.status = 500
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    await app.state.responses.flush()
    [row] = rows(app)
    assert row.status == 500 and row.completion_tokens is None


async def test_a_full_buffer_drops_and_counts_and_requests_still_succeed(
    settings: Settings, app: FastAPI, client: httpx.AsyncClient, metrics: Metrics
) -> None:
    settings.quality.max_pending = 100
    for _ in range(103):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    records = "gateway_response_log_records_total"
    assert metrics.registry.get_sample_value(records, {"outcome": "dropped"}) == 3
    await app.state.responses.flush()
    assert len(rows(app)) == 100
    assert metrics.registry.get_sample_value(records, {"outcome": "written"}) == 100


async def test_a_failed_write_is_retried_without_storing_a_record_twice(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.state.quality_store
    real = store.add_responses
    for _ in range(3):
        await client.post("/v1/chat/completions", json=CHAT)

    def fail_after_writing(batch: Any) -> None:
        real(batch)  # written, but the writer does not learn it
        raise OSError("connection lost")

    monkeypatch.setattr(store, "add_responses", fail_after_writing)
    with pytest.raises(OSError):
        await app.state.responses.flush()
    assert app.state.responses.pending == 3
    monkeypatch.setattr(store, "add_responses", real)
    await client.post("/v1/chat/completions", json=CHAT)
    await app.state.responses.flush()
    assert len(rows(app)) == 4 and app.state.responses.pending == 0


async def test_old_records_expire_and_old_texts_are_cleared(
    keep_all: Settings, app: FastAPI, client: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await client.post("/v1/chat/completions", json=CHAT)
    await app.state.responses.flush()
    old, older, new = rows(app)
    store = app.state.quality_store
    with store._sessions.begin() as session:
        session.get(ResponseRow, old.id).at = utcnow() - timedelta(days=8)
        session.get(ResponseRow, older.id).at = utcnow() - timedelta(days=31)
    assert await app.state.responses.expire() == (1, 1)
    kept = {row.id: row for row in rows(app)}
    assert set(kept) == {old.id, new.id}
    assert kept[old.id].answer_text is None and kept[old.id].completion_tokens == 5
    assert kept[new.id].answer_text is not None


async def test_usage_groups_requests_errors_and_tokens(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    for _ in range(2):
        await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json={**CHAT, "model": "french"})
    fake_state.status = 503
    await client.post("/v1/chat/completions", json=CHAT)
    response = await client.get("/admin/usage", params={"by": "route", "since": "1h"})
    assert response.status_code == 200, response.text
    groups = {g["key"]["route"]: g for g in response.json()["groups"]}
    assert groups["pirate"] == {
        "key": {"route": "pirate"},
        "requests": 3,
        "errors": 1,
        "prompt_tokens": 6,
        "completion_tokens": 10,
    }
    assert groups["french"]["requests"] == 1
    later = await client.get("/admin/usage", params={"since": "2999-01-01T00:00:00"})
    assert later.status_code == 400 and later.json()["error"]["param"] == "until"


@pytest.mark.parametrize(
    "params", [{"since": "yesterday"}, {"by": "user"}, {"since": "1h", "until": "2h"}]
)
async def test_usage_refuses_bad_parameters_with_a_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/admin/usage", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


async def test_the_judge_s_own_requests_are_not_logged(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    judged = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"x-lora-gateway-judge": "1"}
    )
    assert judged.status_code == 200
    await client.post("/v1/chat/completions", json=CHAT)
    await app.state.responses.flush()
    assert [row.request_id for row in rows(app)] != [judged.headers["x-request-id"]]
    assert len(rows(app)) == 1
