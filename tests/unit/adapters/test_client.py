from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.client import GatewayClient, GatewayError

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(GatewayClient.call.retry, "sleep", waited.append)
    return waited


class Recorder:
    """A MockTransport handler that answers in turn and keeps every request."""

    def __init__(self, *answers: httpx.Response | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request) if callable(answer) else answer

    def client(self, admin_key: str | None = "sk-admin") -> GatewayClient:
        return GatewayClient("http://gateway", admin_key, transport=httpx.MockTransport(self))


def openai_error(status: int, message: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    return httpx.Response(status, json=body)


def test_a_refusal_carries_the_gateways_message_and_status(sleeps: list[float]) -> None:
    client = Recorder(openai_error(400, "rank 64 is above the gateway's limit of 16")).client()

    with pytest.raises(GatewayError) as caught:
        client.register({"name": "pirate"})

    assert caught.value.message == "rank 64 is above the gateway's limit of 16"
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(400, text="plain words\n"), "plain words"),
        (httpx.Response(400, json={"detail": "x"}), '{"detail":"x"}'),
        (httpx.Response(400), "Bad Request"),
    ],
)
def test_an_error_in_another_shape_keeps_the_body_or_reason(
    sleeps: list[float], response: httpx.Response, message: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        Recorder(response).client().models()

    assert caught.value.message == message


def test_a_503_is_retried_then_succeeds(sleeps: list[float]) -> None:
    recorder = Recorder(
        openai_error(503, "restarting"),
        openai_error(503, "restarting"),
        httpx.Response(200, json={"data": [{"id": "base", "parent": None}]}),
    )

    assert recorder.client().models() == [{"id": "base", "parent": None}]
    assert len(recorder.requests) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 404, 409, 500])
def test_other_errors_are_not_retried(sleeps: list[float], status: int) -> None:
    recorder = Recorder(openai_error(status, "no"), httpx.Response(200, json={"data": []}))

    with pytest.raises(GatewayError) as caught:
        recorder.client().models()

    assert caught.value.status == status
    assert len(recorder.requests) == 1
    assert sleeps == []


def test_a_busy_gateway_is_given_up_on_after_five_attempts(sleeps: list[float]) -> None:
    recorder = Recorder(openai_error(429, "slow down"))

    with pytest.raises(GatewayError) as caught:
        recorder.client().models()

    assert (caught.value.status, caught.value.message) == (429, "slow down")
    assert len(recorder.requests) == 5


def test_a_refused_connection_is_retried(sleeps: list[float]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    recorder = Recorder(refuse, httpx.Response(200, json={"data": []}))

    assert recorder.client().models() == []
    assert len(recorder.requests) == 2


def test_an_unreachable_gateway_says_where_it_looked(sleeps: list[float]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(GatewayError) as caught:
        Recorder(refuse).client().models()

    assert caught.value.status == 0
    assert caught.value.message.startswith("cannot reach the gateway at http://gateway: ")


def test_requests_carry_the_admin_key_and_actor() -> None:
    recorder = Recorder(httpx.Response(200, json={"data": []}))

    recorder.client("sk-admin").models()

    assert recorder.requests[0].headers["authorization"] == "Bearer sk-admin"
    assert recorder.requests[0].headers["x-actor"] == "adapters-pipeline"


def test_without_an_admin_key_no_authorization_is_sent() -> None:
    recorder = Recorder(httpx.Response(200, json={"data": []}))

    recorder.client(None).models()

    assert "authorization" not in recorder.requests[0].headers


MODELS = {
    "object": "list",
    "data": [
        {"id": "auto", "parent": None},
        {"id": "pirate", "root": "pirate--v3", "parent": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "parent": None},
        {"id": "french", "root": "french", "parent": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        {"id": "two--dashes", "root": "two--dashes--v12", "parent": "x"},
    ],
}


def test_base_model_is_the_entry_without_a_parent_other_than_auto() -> None:
    client = Recorder(httpx.Response(200, json=MODELS)).client()

    assert client.base_model() == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_base_model_of_a_gateway_listing_none_is_an_error() -> None:
    client = Recorder(httpx.Response(200, json={"data": [{"id": "auto", "parent": None}]})).client()

    with pytest.raises(GatewayError, match="no base model"):
        client.base_model()


@pytest.mark.parametrize(
    ("name", "version"),
    [("pirate", 3), ("two--dashes", 12), ("french", None), ("unknown", None)],
)
def test_stable_version_is_read_off_the_engine_name_in_root(name: str, version: int | None) -> None:
    client = Recorder(httpx.Response(200, json=MODELS)).client()

    assert client.stable_version(name) == version


def test_complete_asks_for_a_greedy_answer_and_returns_its_text() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": "Arr"}}]}
    recorder = Recorder(httpx.Response(200, json=answer))

    text = recorder.client().complete("pirate@2", [{"role": "user", "content": "Hi"}], 16)

    sent = json.loads(recorder.requests[0].content)
    assert text == "Arr"
    assert recorder.requests[0].url.path == "/v1/chat/completions"
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("pirate@2", 0.0, 16)


def test_adapter_not_found_is_none() -> None:
    client = Recorder(openai_error(404, "no adapter 'x'")).client()

    assert client.adapter("x") is None


def test_register_says_whether_the_version_is_new() -> None:
    recorder = Recorder(
        httpx.Response(201, json={"version": 2}), httpx.Response(200, json={"version": 2})
    )
    client = recorder.client()

    assert client.register({"name": "pirate"}) == ({"version": 2}, True)
    assert client.register({"name": "pirate"}) == ({"version": 2}, False)


def test_put_document_sends_yaml_with_the_reason() -> None:
    recorder = Recorder(httpx.Response(200, json={}))

    recorder.client().put_document("slos", "routes: {}\n", reason="pipeline")

    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("PUT", "/admin/slos")
    assert request.headers["content-type"] == "application/yaml"
    assert request.content == b"routes: {}\n"
    assert request.url.params["reason"] == "pipeline"


def evidence_page(ids: list[int], next_after: str | None) -> httpx.Response:
    page: dict[str, Any] = {
        "object": "list",
        "rollout": {"id": 7, "route": "pirate"},
        "data": [{"id": i} for i in ids],
        "next_after": next_after,
    }
    return httpx.Response(200, json=page)


def test_evidence_follows_next_after_through_every_page() -> None:
    recorder = Recorder(
        evidence_page([1, 2], "c2"), evidence_page([3], "c3"), evidence_page([4], None)
    )

    page = recorder.client().evidence(7, reward_below=0.25)

    assert [row["id"] for row in page["data"]] == [1, 2, 3, 4]
    assert page["rollout"] == {"id": 7, "route": "pirate"}
    assert [r.url.path for r in recorder.requests] == ["/admin/rollouts/7/evidence"] * 3
    assert [r.url.params.get("after") for r in recorder.requests] == [None, "c2", "c3"]
    assert all(r.url.params["reward_below"] == "0.25" for r in recorder.requests)
    assert all(r.url.params["limit"] == "1000" for r in recorder.requests)


def test_evidence_without_a_threshold_sends_none() -> None:
    recorder = Recorder(evidence_page([], None))

    recorder.client().evidence("pirate")

    assert "reward_below" not in recorder.requests[0].url.params
    assert recorder.requests[0].url.path == "/admin/rollouts/pirate/evidence"
