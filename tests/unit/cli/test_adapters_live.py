"""`lora-gateway adapters` against the real admin API (a gateway on a loopback socket, the fake
engine behind it): the contract the CLI was written against is the one the gateway speaks."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from gateway.cli import app as cli


def _run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["adapters", *args, "--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_registers_loads_lists_and_retires_through_the_real_admin_api(
    gateway_url: str,
) -> None:
    assert "registered pirate@1" in _run(gateway_url, "register", "pirate", "pirate/v1")
    assert "already registered as pirate@1" in _run(gateway_url, "register", "pirate", "pirate/v1")
    assert "registered pirate@2" in _run(gateway_url, "register", "pirate", "pirate/v2")
    _run(gateway_url, "load", "pirate", "2", "--pin")
    _run(gateway_url, "retire", "pirate", "1", "--reason", "superseded")

    listed = _run(gateway_url, "list")
    assert "retired" in listed and "ready" in listed
    versions = httpx.get(f"{gateway_url}/admin/adapters/pirate").json()["versions"]
    assert [(v["version"], v["state"], v["pinned"]) for v in versions] == [
        (1, "retired", False),
        (2, "ready", True),
    ]
    events = httpx.get(f"{gateway_url}/admin/audit", params={"adapter": "pirate"}).json()["data"]
    retired = [e for e in events if e["action"] == "state:retired"]
    assert [(e["version"], e["reason"]) for e in retired] == [(1, "superseded")]
    assert retired[0]["actor"].startswith("anonymous:")  # the CLI names the person


def test_cli_shows_a_refused_registration_and_exits_1(gateway_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["adapters", "register", "pirate", "../elsewhere", "--url", gateway_url]
    )
    assert result.exit_code == 1
    assert "must not contain '..'" in result.output
    assert httpx.get(f"{gateway_url}/admin/adapters").json()["data"] == []
