from __future__ import annotations

import json

import httpx
import pytest

from gateway.api.serving import ModelRename
from gateway.metrics import Metrics
from gateway.testing.fake_vllm import FakeEngineState

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize(
    ("model", "engine_model", "adapter_header", "route"),
    [
        ("smollm2", "smollm2", "base", "smollm2"),
        ("pirate", "pirate--v1", "pirate@1", "pirate"),
        ("pirate@2", "pirate--v2", "pirate@2", "pirate"),
        ("pirate@1", "pirate--v1", "pirate@1", "pirate"),
        ("french", "french--v1", "french@1", "french"),
    ],
)
async def test_model_field_resolves_to_engine_name(
    client: httpx.AsyncClient,
    fake_state: FakeEngineState,
    model: str,
    engine_model: str,
    adapter_header: str,
    route: str,
) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
    assert response.status_code == 200, response.text
    assert fake_state.received[-1]["model"] == engine_model
    assert response.headers["x-adapter"] == adapter_header
    assert response.headers["x-route"] == route


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("model", ["smollm2", "pirate", "pirate@2", "french@1"])
async def test_the_answer_names_the_model_the_client_called_plain_and_streamed(
    client: httpx.AsyncClient, fake_state: FakeEngineState, endpoint: str, model: str
) -> None:
    body = {"model": model, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}

    plain = await client.post(endpoint, json=body)
    streamed = await client.post(endpoint, json={**body, "stream": True})

    assert plain.status_code == streamed.status_code == 200, (plain.text, streamed.text)
    assert plain.json()["model"] == model
    assert "--v" not in plain.text
    events = [e for e in streamed.text.split("\n\n") if e.startswith("data: {")]
    assert len(events) == fake_state.stream_chunks
    assert {json.loads(e.removeprefix("data: "))["model"] for e in events} == {model}
    assert "--v" not in streamed.text
    # The engine was asked for its own name all the same.
    assert fake_state.received[-1]["model"] != model or model == "smollm2"


def test_the_rename_touches_only_the_model_field() -> None:
    rename = ModelRename.of("pirate--v2", "pirate")
    assert rename is not None and ModelRename.of("smollm2", "smollm2") is None
    compact = b'{"model":"pirate--v2","choices":[{"text":"\\"model\\":\\"pirate--v2\\""}]}'
    spaced = b'data: {"id": "x", "model": "pirate--v2", "choices": []}\n\n'

    assert json.loads(rename.apply(compact)) == {
        "model": "pirate",
        "choices": [{"text": '"model":"pirate--v2"'}],
    }
    assert rename.apply(spaced) == b'data: {"id": "x", "model": "pirate", "choices": []}\n\n'
    assert rename.apply(b'{"model":"pirate--v22"}') == b'{"model":"pirate--v22"}'


async def test_unknown_fields_pass_through_unchanged(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    extra = {
        "temperature": 0,
        "top_k": 7,
        "guided_json": {"type": "object"},
        "seed": 11,
        "user": "u-1",
        "logit_bias": {"42": -100},
    }
    response = await client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 200
    forwarded = fake_state.received[-1]
    for key, value in extra.items():
        assert forwarded[key] == value
    assert forwarded["messages"] == CHAT["messages"]


async def test_completions_endpoint_forwards_prompt(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    response = await client.post("/v1/completions", json={"model": "french", "prompt": "Bonjour"})
    assert response.status_code == 200
    assert response.json()["object"] == "text_completion"
    assert fake_state.received[-1] == {"model": "french--v1", "prompt": "Bonjour"}


async def test_request_id_is_echoed_or_made(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    given = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-1"})
    assert given.headers["x-request-id"] == "abc-1"
    assert fake_state.received_headers[-1]["x-request-id"] == "abc-1"
    made = await client.post("/v1/chat/completions", json=CHAT)
    assert len(made.headers["x-request-id"]) == 32
    bad = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "a b\t"})
    assert bad.headers["x-request-id"] != "a b\t"


async def test_models_lists_base_adapters_and_versions(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    ids = [m["id"] for m in response.json()["data"]]
    assert ids[0] == "smollm2"
    assert set(ids) == {"smollm2", "pirate", "pirate@1", "pirate@2", "french", "french@1"}
    pirate = next(m for m in response.json()["data"] if m["id"] == "pirate")
    assert pirate["parent"] == "smollm2" and pirate["root"] == "pirate--v1"


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_404(
    client: httpx.AsyncClient, fake_state: FakeEngineState, stream: bool
) -> None:
    for model in ["nope", "pirate@9", "pirate@", "@1", "pirate--v1"]:
        response = await client.post(
            "/v1/chat/completions", json={**CHAT, "model": model, "stream": stream}
        )
        error = assert_openai_error(response, 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
    assert fake_state.received == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"\xff\xfe", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({**CHAT, "model": 5}).encode(), "model"),
        (json.dumps({**CHAT, "messages": []}).encode(), "messages"),
        (json.dumps({**CHAT, "messages": "hi"}).encode(), "messages"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), "stream"),
        (json.dumps({**CHAT, "user": 7}).encode(), "user"),
    ],
)
async def test_malformed_bodies_are_400(
    client: httpx.AsyncClient, fake_state: FakeEngineState, body: bytes, param: str | None
) -> None:
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fake_state.received == []


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/chat/completions", b'{"model": "smollm2", "messages": [}', "line 1, column 35"),
        ("/v1/completions", b'{\n  "model": "smollm2",\n  "prompt": "x",,\n}', "line 3, column 17"),
        ("/admin/adapters", b'{"name": "x", "path": }', "line 1, column 23"),
        ("/admin/rollouts", b'{"route": "pirate",\n "version": 2', "line 2, column 14"),
        ("/admin/adapters/pirate/versions/1/load", b"{not json", "line 1, column 2"),
    ],
)
async def test_a_body_that_is_not_json_says_what_is_wrong_and_where(
    client: httpx.AsyncClient, path: str, body: bytes, where: str
) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})

    error = assert_openai_error(response, 400)
    assert error["param"] is None
    assert str(error["message"]).startswith("Request body is not valid JSON: ")
    assert str(error["message"]).endswith(f"({where}).")


async def test_completions_prompt_is_validated(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": "smollm2", "prompt": {"a": 1}})
    assert_openai_error(response, 400)


async def test_body_too_large_is_413(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    response = await client.post("/v1/chat/completions", json=big)
    error = assert_openai_error(response, 413)
    assert error["code"] == "body_too_large"
    assert fake_state.received == []


async def test_chunked_body_too_large_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1000

    response = await client.post("/v1/chat/completions", content=chunks())
    assert_openai_error(response, 413)


async def test_unknown_path_and_method_use_error_shape(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing"), 404)
    assert_openai_error(await client.get("/v1/chat/completions"), 405)


async def test_engine_error_status_is_passed_through(
    client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.status = 400
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 400)


async def test_metrics_count_requests_per_adapter_and_status(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    await client.post("/v1/chat/completions", json={**CHAT, "model": "pirate@1"})
    await client.post("/v1/chat/completions", json={**CHAT, "model": "pirate@1"})
    await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    sample = metrics.registry.get_sample_value
    labels = {
        "endpoint": "/v1/chat/completions",
        "adapter": "pirate",
        "version": "1",
        "status_class": "2xx",
    }
    assert sample("gateway_requests_total", labels) == 2
    assert sample("gateway_request_duration_seconds_count", labels) == 2
    text = (await client.get("/metrics")).text
    assert 'gateway_requests_total{adapter="pirate"' in text


async def test_health_and_readiness(client: httpx.AsyncClient, fake_state: FakeEngineState) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
