"""`lora-gateway adapters` against an in-memory fake of the admin API."""

from __future__ import annotations

import hashlib
import json
import socket
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from gateway.cli import app, client

Json = dict[str, Any]
NOW = "2025-01-02T03:04:05+00:00"
REPLICA = "http://10.0.0.5:8001"
STATES = {"load": "ready", "unload": "registered", "retire": "retired"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FakeAdmin:
    """The gateway's admin API contract, held in memory."""

    def __init__(self) -> None:
        self.adapters: dict[str, Json] = {}
        self.events: list[Json] = []
        self.requests: list[httpx.Request] = []

    def add(
        self,
        name: str,
        path: str,
        sha256: str,
        state: str = "registered",
        manifest: Json | None = None,
    ) -> tuple[Json, bool]:
        adapter = self.adapters.setdefault(name, {"name": name, "created_at": NOW, "versions": []})
        for existing in adapter["versions"]:
            if existing["sha256"] == sha256:
                return existing, False
        number = len(adapter["versions"]) + 1
        version = {
            "name": name,
            "version": number,
            "ref": f"{name}@{number}",
            "state": state,
            "path": path,
            "sha256": sha256,
            "base_model": "smollm2-135m",
            "rank": 8,
            "target_modules": ["q_proj", "v_proj"],
            "manifest": manifest or {},
            "created_at": NOW,
            "updated_at": NOW,
            "resident_on": [REPLICA] if state == "ready" else [],
            "pinned": False,
        }
        adapter["versions"].append(version)
        self._audit("register", name, number, "")
        return version, True

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        try:
            return self._route(request)
        except ApiError as exc:
            error = {"message": str(exc), "type": "not_found", "param": None, "code": None}
            return httpx.Response(exc.status, json={"error": error})

    def _route(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        match request.method, request.url.path.strip("/").split("/"):
            case "GET", ["admin", "adapters"]:
                return httpx.Response(
                    200, json={"object": "list", "data": list(self.adapters.values())}
                )
            case "GET", ["admin", "adapters", name]:
                return httpx.Response(200, json=self._adapter(name))
            case "POST", ["admin", "adapters"]:
                sha256 = body.get("sha256") or hashlib.sha256(body["path"].encode()).hexdigest()
                version, created = self.add(
                    body["name"], body["path"], sha256, manifest=body.get("manifest")
                )
                return httpx.Response(201 if created else 200, json=version)
            case "POST", ["admin", "adapters", name, "versions", number, action]:
                version = self._version(name, int(number))
                version["state"] = STATES[action]
                version["resident_on"] = [REPLICA] if action == "load" else []
                version["pinned"] = action == "load" and body.get("pin", False)
                self._audit(action, name, int(number), body.get("reason", ""))
                return httpx.Response(200, json=version)
            case "DELETE", ["admin", "adapters", name, "versions", number]:
                self._adapter(name)["versions"].remove(self._version(name, int(number)))
                return httpx.Response(
                    200, json={"deleted": True, "name": name, "version": int(number)}
                )
            case "GET", ["admin", "audit"]:
                adapter = request.url.params.get("adapter")
                events = [e for e in self.events if adapter in (None, e["adapter"])]
                limit = int(request.url.params.get("limit", 50))
                return httpx.Response(200, json={"object": "list", "data": events[-limit:]})
        raise ApiError(404, f"no route for {request.method} {request.url.path}")

    def _adapter(self, name: str) -> Json:
        if name not in self.adapters:
            raise ApiError(404, f"adapter {name!r} not found")
        return self.adapters[name]

    def _version(self, name: str, number: int) -> Json:
        for version in self._adapter(name)["versions"]:
            if version["version"] == number:
                return version
        raise ApiError(404, f"adapter version {name}@{number} not found")

    def _audit(self, action: str, name: str, version: int, reason: str) -> None:
        event = {"id": len(self.events) + 1, "at": NOW, "actor": "admin", "action": action}
        self.events.append(
            event | {"adapter": name, "version": version, "reason": reason, "detail": {}}
        )


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> FakeAdmin:
    fake = FakeAdmin()
    fake.add("pirate", "pirate/v1", "a" * 64, state="ready", manifest={"dataset": "pirate-chat"})
    fake.add("pirate", "pirate/v2", "b" * 64, state="failed")
    fake.add("french", "french/v1", "c" * 64, state="retired")
    fake.requests.clear()
    transport = httpx.MockTransport(fake.handle)
    monkeypatch.setattr(client, "make_client", partial(client.make_client, transport=transport))
    return fake


def invoke(*args: str, input: str | None = None, **env: str) -> Result:
    # A wide terminal keeps table cells on one line; the caller's own settings must not leak in.
    base: dict[str, str | None] = {
        "COLUMNS": "200",
        "LORA_GATEWAY_URL": None,
        "LORA_GATEWAY_ADMIN_KEY": None,
    }
    return CliRunner(env=base | env).invoke(app, list(args), input=input)


def rows(output: str) -> list[list[str]]:
    """The body rows of every table in the output, as stripped cells."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def test_list_renders_every_version_with_its_state(admin: FakeAdmin) -> None:
    result = invoke("adapters", "list")
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert [(r[0], r[1], r[2]) for r in table] == [
        ("pirate", "1", "ready"),
        ("pirate", "2", "failed"),
        ("french", "1", "retired"),
    ]
    assert table[0][3:] == ["8", "1", "no", "a" * 12, "2025-01-02 03:04:05"]


def test_register_reports_a_new_version_then_the_existing_one(admin: FakeAdmin) -> None:
    first = invoke("adapters", "register", "german", "german/v1")
    second = invoke("adapters", "register", "german", "german/v1")
    assert first.exit_code == second.exit_code == 0
    assert "registered german@1" in first.stdout
    assert "already registered as german@1" in second.stdout
    assert [r[:3] for r in rows(second.stdout)] == [["german", "1", "registered"]]
    assert len(admin.adapters["german"]["versions"]) == 1


def test_register_sends_the_manifest_file_and_the_admin_key(
    admin: FakeAdmin, tmp_path: Path
) -> None:
    manifest = {"dataset": "german-chat", "epochs": 3}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    result = invoke(
        "adapters",
        "register",
        "german",
        "german/v1",
        "--manifest",
        str(path),
        "--reason",
        "launch",
        LORA_GATEWAY_ADMIN_KEY="s3cret",
    )
    assert result.exit_code == 0, result.output
    (request,) = admin.requests
    assert request.headers["authorization"] == "Bearer s3cret"
    assert json.loads(request.content) == {
        "name": "german",
        "path": "german/v1",
        "manifest": manifest,
        "reason": "launch",
    }


def test_register_refuses_a_manifest_that_is_not_an_object(
    admin: FakeAdmin, tmp_path: Path
) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("[1, 2]")
    result = invoke("adapters", "register", "german", "german/v1", "--manifest", str(path))
    assert result.exit_code == 1
    assert "must be a JSON object" in result.stderr
    assert admin.requests == []


def test_api_error_prints_its_message_and_exits_1(admin: FakeAdmin) -> None:
    result = invoke("adapters", "show", "nope")
    assert result.exit_code == 1
    assert "error: adapter 'nope' not found (HTTP 404)" in result.stderr
    assert result.stdout == ""


def test_unreachable_gateway_exits_1_with_a_clear_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = invoke("adapters", "list", "--url", url)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"error: cannot reach the gateway at {url}" in result.stderr
    assert "Traceback" not in result.output


def test_show_lists_versions_with_replicas_and_manifest(admin: FakeAdmin) -> None:
    result = invoke("adapters", "show", "pirate")
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert table[0][:5] == ["pirate", "1", "ready", "8", REPLICA]
    assert ["1", "smollm2-135m", "q_proj, v_proj", "dataset: pirate-chat"] in table


def test_load_with_pin_sends_pin_and_shows_the_ready_version(admin: FakeAdmin) -> None:
    result = invoke("adapters", "load", "pirate", "2", "--pin", "--reason", "retry")
    assert result.exit_code == 0, result.output
    assert json.loads(admin.requests[0].content) == {"pin": True, "reason": "retry"}
    assert "loaded pirate@2" in result.stdout
    assert rows(result.stdout)[0][:6] == ["pirate", "2", "ready", "8", REPLICA, "yes"]


def test_retire_without_reason_is_refused(admin: FakeAdmin) -> None:
    result = invoke("adapters", "retire", "pirate", "1")
    assert result.exit_code == 2
    assert "--reason" in result.output
    assert admin.requests == []


def test_delete_without_yes_asks_and_aborts_on_no(admin: FakeAdmin) -> None:
    result = invoke("adapters", "delete", "pirate", "2", input="n\n")
    assert result.exit_code == 1
    assert "Delete pirate@2?" in result.output
    assert "Aborted" in result.output
    assert admin.requests == []
    assert len(admin.adapters["pirate"]["versions"]) == 2


def test_delete_with_yes_removes_the_version(admin: FakeAdmin) -> None:
    result = invoke("adapters", "delete", "pirate", "2", "--yes")
    assert result.exit_code == 0, result.output
    assert "deleted pirate@2" in result.stdout
    assert [v["version"] for v in admin.adapters["pirate"]["versions"]] == [1]


def test_audit_lists_the_adapters_events_oldest_first(admin: FakeAdmin) -> None:
    invoke("adapters", "retire", "pirate", "2", "--reason", "bad outputs")
    result = invoke("adapters", "audit", "--adapter", "pirate", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert dict(admin.requests[-1].url.params) == {"adapter": "pirate", "limit": "2"}
    assert [(r[3], r[4], r[5]) for r in rows(result.stdout)] == [
        ("register", "pirate@2", ""),
        ("retire", "pirate@2", "bad outputs"),
    ]


def test_json_flag_prints_the_raw_response(admin: FakeAdmin) -> None:
    result = invoke("adapters", "list", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["object"] == "list"
    assert [v["ref"] for a in payload["data"] for v in a["versions"]] == [
        "pirate@1",
        "pirate@2",
        "french@1",
    ]
