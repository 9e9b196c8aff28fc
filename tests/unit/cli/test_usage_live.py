"""`lora-gateway usage` against a live gateway with the fake engine: what it shows matches
what was served."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from gateway.cli import app as cli


def _run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["usage", *args, "--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_usage_counts_requests_and_tokens_per_group(gateway_url: str) -> None:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert httpx.post(f"{gateway_url}/v1/chat/completions", json=body).status_code == 200
    shown = _run(gateway_url, "--by", "route", "--by", "endpoint")
    assert "smollm2" in shown and "/v1/chat/completions" in shown
    payload = json.loads(_run(gateway_url, "--by", "tenant", "--json"))
    assert payload["groups"] == [
        {
            "key": {"tenant": "anonymous"},
            "requests": 3,
            "errors": 0,
            "prompt_tokens": 9,
            "completion_tokens": 15,
        }
    ]


def test_usage_shows_a_bad_time_and_exits_1(gateway_url: str) -> None:
    result = CliRunner().invoke(cli, ["usage", "--since", "last week", "--url", gateway_url])
    assert result.exit_code == 1 and "neither an ISO time nor an age" in result.output
