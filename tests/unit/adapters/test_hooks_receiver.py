from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from adapters.client import GatewayClient, GatewayError
from adapters.hooks_cli import make_app
from adapters.lineage import Lineage
from adapters.spec import LoadedSpec, load_spec

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
FINGERPRINT = "ab" * 32
SPEC = """\
name: pirate
output: runs
data:
  train: [train.jsonl]
evaluation:
  held_out: {share: 0.2}
"""
EVIDENCE = [
    {
        "source": "canary",
        "request_id": "req-1",
        "messages": [{"role": "user", "content": "Hello?"}],
        "prompt": None,
        "answer": "Bonjour",
        "reasons": [{"signal": "feedback", "value": None, "detail": "thumbs down"}],
    }
]


def unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request {request.method} {request.url}")


class FakeClient(GatewayClient):
    """Answers `evidence` (or fails as told); any other call fails the test."""

    def __init__(self, error: GatewayError | None = None) -> None:
        super().__init__(transport=httpx.MockTransport(unreachable))
        self.error = error
        self.calls = 0

    def evidence(self, ref: str | int, *, reward_below: float | None = None) -> dict[str, Any]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"object": "list", "data": EVIDENCE, "next_after": None}


def rollback_body(kind: str = "rollout.rolled_back") -> bytes:
    candidate = {"name": "pirate", "version": 2, "lineage": {"run_fingerprint": FINGERPRINT}}
    event = {
        "type": kind,
        "timestamp": "2024-01-01T00:00:00Z",
        "data": {
            "rollout": {"id": 7, "route": "pirate"},
            "versions": {"candidate": candidate, "stable": {"name": "pirate", "version": 1}},
            "verdict": {"id": 3, "outcome": "rollback"},
            "actor": "analysis",
            "reason": "error rate",
        },
    }
    return json.dumps(event).encode()


def signed(body: bytes, secret: str = SECRET, msg_id: str = "msg_1") -> dict[str, str]:
    at = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedSpec:
    file = tmp_path / "pirate.yaml"
    file.write_text(SPEC, encoding="utf-8")
    spec = load_spec(file)
    (spec.output / FINGERPRINT[:16]).mkdir(parents=True)
    return spec


def lineage_events(loaded: LoadedSpec) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = Lineage(
        loaded.output / FINGERPRINT[:16] / "lineage.json"
    ).read()["events"]
    return events


def test_a_signed_rollback_is_handled(loaded: LoadedSpec) -> None:
    # BUG (adapters/hooks_cli.py:31,40): `Request` is imported inside make_app while the module
    # has `from __future__ import annotations`, so FastAPI cannot resolve `request: Request`,
    # takes it for a required query parameter and answers every POST /hooks 422. Every test
    # in this file fails on that until it is fixed.
    client = FakeClient()
    app = make_app(SECRET, [loaded], client)
    body = rollback_body()

    response = TestClient(app).post("/hooks", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json() == {"action": "lineage: rolled back"}
    assert [e["event"] for e in lineage_events(loaded)] == ["rolled_back"]
    assert [o.action for o in app.state.handled] == ["lineage: rolled back"]
    assert client.calls == 1


def test_a_signed_event_that_is_ignored_still_answers_200(loaded: LoadedSpec) -> None:
    app = make_app(SECRET, [loaded], FakeClient())
    body = rollback_body("rollout.started")

    response = TestClient(app).post("/hooks", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json() == {"action": "ignored (not a promotion or rollback)"}
    assert lineage_events(loaded) == []


def signed_by_another_secret(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, signed(body, OTHER_SECRET)


def changed_after_signing(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body.replace(b'"id": 7', b'"id": 8'), signed(body)


def unsigned(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {"content-type": "application/json"}


@pytest.mark.parametrize("tamper", [signed_by_another_secret, changed_after_signing, unsigned])
def test_a_bad_signature_is_refused_with_401_and_nothing_is_recorded(
    loaded: LoadedSpec, tamper: Any
) -> None:
    client = FakeClient()
    app = make_app(SECRET, [loaded], client)
    body, headers = tamper(rollback_body())

    response = TestClient(app).post("/hooks", content=body, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"error": "bad signature"}
    assert app.state.handled == []
    assert client.calls == 0
    assert lineage_events(loaded) == []
    assert not (loaded.root / "counterexamples").exists()


def test_a_gateway_error_while_handling_answers_503_and_records_nothing(
    loaded: LoadedSpec,
) -> None:
    client = FakeClient(GatewayError("cannot reach the gateway", 0))
    app = make_app(SECRET, [loaded], client)
    body = rollback_body()

    response = TestClient(app).post("/hooks", content=body, headers=signed(body))

    assert response.status_code == 503
    assert response.json() == {"error": "cannot reach the gateway"}
    assert app.state.handled == []
    assert lineage_events(loaded) == []


def test_a_delivery_retried_after_a_503_is_handled(loaded: LoadedSpec) -> None:
    client = FakeClient(GatewayError("busy", 503))
    app = make_app(SECRET, [loaded], client)
    body = rollback_body()
    http = TestClient(app)
    assert http.post("/hooks", content=body, headers=signed(body)).status_code == 503

    client.error = None
    response = http.post("/hooks", content=body, headers=signed(body))

    assert response.status_code == 200
    assert [e["event"] for e in lineage_events(loaded)] == ["rolled_back"]


def test_a_signed_body_that_is_not_an_object_is_refused_with_400(loaded: LoadedSpec) -> None:
    app = make_app(SECRET, [loaded], FakeClient())
    body = b"[1, 2, 3]"

    response = TestClient(app).post("/hooks", content=body, headers=signed(body))

    assert response.status_code == 400
    assert app.state.handled == []
