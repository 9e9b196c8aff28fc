"""`lora-gateway rollouts` (and `adapters stable`) against a live gateway with the fake engine:
what the CLI sends, what it shows, and that the gateway then serves what the commands said."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from gateway.app import create_app
from gateway.cli import app as cli
from gateway.cli import client
from gateway.config import Settings
from gateway.testing.adapters import TINY_BASE, write_adapter
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from gateway.testing.server import free_port, serve_in_loop

Json = dict[str, Any]
# Registered at start (pirate's stable version is 1).
ADAPTERS = {"pirate/v1": 1.0, "pirate/v2": 2.0, "french/v1": 3.0}
DEFAULT_WEIGHTS = [1.0, 5.0, 25.0, 50.0, 100.0]


@dataclass
class Gateway:
    """A running gateway, the CLI pointed at it, and the admin requests the CLI sent."""

    url: str
    sent: list[httpx.Request]

    def cli(self, *args: str) -> Result:
        env = {"COLUMNS": "200", "LORA_GATEWAY_URL": self.url, "LORA_GATEWAY_ADMIN_KEY": None}
        return CliRunner(env=env).invoke(cli, list(args))

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.exit_code == 0, result.output
        return result.stdout

    def json(self, *args: str) -> Json:
        payload: Json = json.loads(self.ok(*args, "--json"))
        return payload

    def body(self) -> Json:
        """The JSON body of the CLI's last request."""
        sent: Json = json.loads(self.sent[-1].content)
        return sent

    def chat(self, model: str = "pirate", user: str | None = None) -> httpx.Response:
        body: Json = {"model": model, "messages": [{"role": "user", "content": "Ahoy"}]}
        if user is not None:
            body["user"] = user
        response = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response

    def admin(self, path: str, **params: Any) -> Any:
        return httpx.get(f"{self.url}/admin{path}", params=params, timeout=10).json()


def _serve(root: Path, state: Path, started: Future[str], stop: threading.Event) -> None:
    async def run() -> None:
        async with serve_in_loop(create_fake_vllm(FakeEngineState(base_model="smollm2"))) as eng:
            settings = Settings(
                base_model_name="smollm2",
                upstream_urls=[eng],
                adapter_root=root,
                state_dir=state,
            )
            async with serve_in_loop(create_app(settings, base_info=TINY_BASE)) as url:
                started.set_result(url)
                await asyncio.to_thread(stop.wait)

    try:
        asyncio.run(run())
    except BaseException as exc:
        if not started.done():
            started.set_exception(exc)
        raise


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Every request the CLI sends from now on."""
    requests: list[httpx.Request] = []
    real_client = client.make_client

    def spying_client(url: str, key: str | None) -> httpx.Client:
        http = real_client(url, key)
        http.event_hooks["request"].append(requests.append)
        return http

    monkeypatch.setattr(client, "make_client", spying_client)
    return requests


@pytest.fixture
def gateway(tmp_path: Path, sent: list[httpx.Request]) -> Iterator[Gateway]:
    root = tmp_path / "adapters"
    for relative, fill in ADAPTERS.items():
        write_adapter(root / relative, fill=fill)
    started: Future[str] = Future()
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve, args=(root, tmp_path / "state", started, stop), daemon=True
    )
    thread.start()
    try:
        yield Gateway(started.result(timeout=30), sent)
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def nowhere(sent: list[httpx.Request]) -> Gateway:
    """No gateway: nothing listens on the port, so a request sent would exit 1."""
    return Gateway(f"http://127.0.0.1:{free_port()}", sent)


def rows(output: str) -> list[list[str]]:
    """The body rows of every table in the output, as stripped cells."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def line(output: str, label: str) -> str:
    """The value of a `label: value` line of the status summary."""
    for text in output.splitlines():
        if text.startswith(f"{label}:"):
            return text.removeprefix(f"{label}:").strip()
    raise AssertionError(f"no {label!r} line in:\n{output}")


# -- start ---------------------------------------------------------------------------------


def test_start_sends_only_the_plan_options_given(gateway: Gateway) -> None:
    rollout = gateway.json(
        "rollouts", "start", "pirate", "2",
        "--shadow-rate", "0.5",
        "--shadow-min-samples", "3",
        "--steps", "10, 50,100",
        "--step-min-samples", "7",
        "--reason", "retrained",
    )  # fmt: skip
    assert gateway.body() == {
        "route": "pirate",
        "version": 2,
        "plan": {
            "shadow": {"sample_rate": 0.5, "min_samples": 3},
            "canary": [
                {"weight": 10.0, "min_samples": 7},
                {"weight": 50.0, "min_samples": 7},
                {"weight": 100.0, "min_samples": 7},
            ],
        },
        "reason": "retrained",
    }
    assert (rollout["stage"], rollout["stable_version"], rollout["candidate_version"]) == (
        "shadow",
        1,
        2,
    )
    # The server filled in what was not given.
    assert rollout["plan"]["shadow"] == {"sample_rate": 0.5, "min_samples": 3, "min_duration_s": 0}
    assert [s["weight"] for s in rollout["plan"]["canary"]] == [10, 50, 100]
    assert rollout["reason"] == "retrained"


def test_step_minimums_without_steps_keep_the_default_weights(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2", "--step-min-duration", "30")
    assert gateway.body()["plan"] == {
        "canary": [{"weight": w, "min_duration_s": 30.0} for w in DEFAULT_WEIGHTS]
    }


def test_start_without_plan_options_sends_no_plan(gateway: Gateway) -> None:
    output = gateway.ok("rollouts", "start", "pirate", "2")
    assert gateway.body() == {"route": "pirate", "version": 2}
    assert "started rollout 1 of pirate@2" in output
    assert line(output, "stage") == "shadow"
    assert line(output, "step") == "shadow (100% of requests copied), then 5 canary steps"


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_start_with_a_plan_file(gateway: Gateway, tmp_path: Path, suffix: str) -> None:
    plan = {
        "shadow": {"sample_rate": 0.25, "min_samples": 20},
        "canary": [{"weight": 5, "min_samples": 50}, {"weight": 100, "min_duration_s": 60}],
    }
    path = tmp_path / f"plan.{suffix}"
    if suffix == "yaml":
        path.write_text(
            "shadow: {sample_rate: 0.25, min_samples: 20}\n"
            "canary:\n"
            "  - {weight: 5, min_samples: 50}\n"
            "  - {weight: 100, min_duration_s: 60}\n"
        )
    else:
        path.write_text(json.dumps(plan))
    rollout = gateway.json("rollouts", "start", "pirate", "2", "--plan", str(path))
    assert gateway.body()["plan"] == plan
    assert rollout["steps"] == 2
    assert rollout["plan"]["canary"][1] == {"weight": 100, "min_samples": 0, "min_duration_s": 60}


def test_plan_file_with_plan_options_is_a_usage_error(nowhere: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("canary: [{weight: 100}]\n")
    result = nowhere.cli("rollouts", "start", "pirate", "2", "--plan", str(path), "--steps", "50")
    assert result.exit_code == 2
    assert "cannot be combined with --steps" in result.output
    assert nowhere.sent == []


@pytest.mark.parametrize("steps", ["1,five,100", "1,,100", "nan", ""])
def test_bad_steps_are_a_usage_error(nowhere: Gateway, steps: str) -> None:
    result = nowhere.cli("rollouts", "start", "pirate", "2", "--steps", steps)
    assert result.exit_code == 2, result.output
    assert "Invalid value for --steps" in result.output
    assert "Traceback" not in result.output
    assert nowhere.sent == []


def test_a_plan_the_server_refuses_exits_1_with_its_message(gateway: Gateway) -> None:
    result = gateway.cli("rollouts", "start", "pirate", "2", "--steps", "50,10")
    assert result.exit_code == 1
    assert "invalid rollout plan" in result.stderr
    assert "must rise strictly" in result.stderr
    assert "(HTTP 400)" in result.stderr


def test_a_plan_file_that_is_not_a_mapping_fails_before_sending(
    nowhere: Gateway, tmp_path: Path
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("- 1\n- 5\n")
    result = nowhere.cli("rollouts", "start", "pirate", "2", "--plan", str(path))
    assert result.exit_code == 1
    assert "must be a mapping" in result.stderr
    assert nowhere.sent == []


# -- status and the flow of a rollout ------------------------------------------------------


def test_status_shows_stage_weight_samples_and_what_is_missing(gateway: Gateway) -> None:
    gateway.ok(
        "rollouts", "start", "pirate", "2", "--steps", "50,100", "--step-min-samples", "1000"
    )
    gateway.ok("rollouts", "advance", "pirate", "--reason", "shadow looks fine")
    variants = [gateway.chat(user=f"user-{i}").headers["x-variant"] for i in range(24)]
    canary = variants.count("canary")
    assert 0 < canary < 24  # 50% of 24 sticky users

    output = gateway.ok("rollouts", "status", "pirate")
    assert line(output, "rollout 1 of pirate") == "pirate@1 (stable) -> pirate@2 (candidate)"
    assert line(output, "stage") == "canary"
    assert line(output, "step") == "1 of 2"
    assert line(output, "weight") == "50% of requests to the candidate"
    assert line(output, "missing") == f"{canary} of 1000 canary requests"
    table = rows(output)
    assert ["canary 1 (50.0%)", str(24 - canary), str(canary), "0"] in table
    assert ["total", str(24 - canary), str(canary), "0"] in table
    decisions = [r[2:] for r in table if len(r) == 5]  # action, reason, change
    assert decisions == [
        ["start", "", ""],
        ["advance", "shadow looks fine", "shadow -> canary 1 (50%)"],
    ]


def test_advance_promote_and_the_refusals_on_the_way(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2", "--steps", "50,100")

    early = gateway.cli("rollouts", "promote", "pirate")
    assert early.exit_code == 1
    assert "is in shadow; a candidate is promoted only after its canary steps (HTTP 409)" in (
        early.stderr
    )
    assert early.stdout == ""

    assert line(gateway.ok("rollouts", "advance", "pirate"), "step") == "1 of 2"
    skipping = gateway.cli("rollouts", "promote", "pirate")
    assert skipping.exit_code == 1
    assert "advance through the steps or force the promotion" in skipping.stderr
    output = gateway.ok("rollouts", "advance", "pirate")
    assert "advanced rollout 1 of pirate" in output
    assert (line(output, "step"), line(output, "weight")) == (
        "2 of 2",
        "100% of requests to the candidate",
    )
    assert gateway.chat(user="anyone").headers["x-variant"] == "canary"
    last = gateway.cli("rollouts", "advance", "pirate")
    assert last.exit_code == 1
    assert "is at its last canary step; promote it" in last.stderr

    output = gateway.ok("rollouts", "promote", "pirate", "--reason", "all good")
    assert "promoted rollout 1 of pirate" in output
    assert line(output, "stage") == "promoted"
    assert "ended" in output
    # `pirate` is pirate@2 now, for everyone, outside any rollout.
    reply = gateway.chat(user="anyone")
    assert reply.headers["x-adapter"] == "pirate@2"
    assert "x-variant" not in reply.headers
    assert gateway.admin("/rollouts/pirate")["stage"] == "promoted"


def test_minimums_hold_advance_until_forced(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2", "--shadow-min-samples", "5")
    held = gateway.cli("rollouts", "advance", "pirate")
    assert held.exit_code == 1
    assert "has not met its shadow step's minimums: 0 of 5 shadow answers" in held.stderr
    assert gateway.admin("/rollouts/pirate")["stage"] == "shadow"

    output = gateway.ok("rollouts", "advance", "pirate", "--force", "--reason", "hurry")
    assert gateway.body() == {"reason": "hurry", "force": True}
    assert line(output, "step") == "1 of 5"
    assert ["hurry", "shadow -> canary 1 (1%), forced past: 0 of 5 shadow answers"] in [
        r[3:] for r in rows(output) if len(r) == 5
    ]


def test_pause_holds_the_rollout_until_resume(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2")
    assert line(gateway.ok("rollouts", "pause", "pirate"), "stage") == "shadow (paused)"
    held = gateway.cli("rollouts", "advance", "pirate")
    assert held.exit_code == 1
    assert "is paused; resume it first" in held.stderr
    again = gateway.cli("rollouts", "pause", "pirate")
    assert again.exit_code == 1
    assert "is paused already" in again.stderr
    assert line(gateway.ok("rollouts", "resume", "pirate"), "stage") == "shadow"
    assert line(gateway.ok("rollouts", "advance", "pirate"), "stage") == "canary"


def test_rollback_sends_everyone_back_and_list_shows_both_rollouts(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2", "--steps", "100")
    gateway.ok("rollouts", "advance", "pirate")
    assert gateway.chat(user="u").headers["x-adapter"] == "pirate@2"

    output = gateway.ok("rollouts", "rollback", "pirate", "--reason", "worse answers")
    assert "rolled back rollout 1 of pirate" in output
    assert line(output, "stage") == "rolled_back"
    assert line(output, "weight") == "0% of requests to the candidate"
    reply = gateway.chat(user="u")
    assert reply.headers["x-adapter"] == "pirate@1"
    assert "x-variant" not in reply.headers
    gone = gateway.cli("rollouts", "advance", "pirate")
    assert gone.exit_code == 1
    assert "route 'pirate' has no active rollout (HTTP 404)" in gone.stderr

    gateway.ok("rollouts", "start", "pirate", "2")
    gateway.ok("rollouts", "abort", "pirate")
    table = rows(gateway.ok("rollouts", "list"))
    assert [r[:7] for r in table] == [
        ["2", "pirate", "1", "2", "aborted", "shadow", "0%"],
        ["1", "pirate", "1", "2", "rolled_back", "1/1", "0%"],
    ]
    assert [r["id"] for r in gateway.json("rollouts", "list", "--limit", "1")["data"]] == [2]


def test_status_of_a_route_without_rollouts_exits_1(gateway: Gateway) -> None:
    result = gateway.cli("rollouts", "status", "french")
    assert result.exit_code == 1
    assert "route 'french' has had no rollout (HTTP 404)" in result.stderr


def test_a_second_rollout_of_the_route_is_refused(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2")
    result = gateway.cli("rollouts", "start", "pirate", "2")
    assert result.exit_code == 1
    assert "has an active rollout" in result.stderr
    assert "(HTTP 409)" in result.stderr


# -- assignments and shadow pairs ----------------------------------------------------------


def test_assign_shows_the_variants_requests_get(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2", "--steps", "50,100")
    gateway.ok("rollouts", "advance", "pirate")
    subjects = [f"s{i}" for i in range(12)]
    served = [gateway.chat(user=s).headers["x-variant"] for s in subjects]
    assert set(served) == {"stable", "canary"}

    output = gateway.ok("rollouts", "assign", "pirate", *subjects)
    assert "rollout 1 (canary, 50% canary)" in output
    assert rows(output) == [[s, v] for s, v in zip(subjects, served, strict=True)]
    assert gateway.body() == {"subjects": subjects}
    assert gateway.json("rollouts", "assign", "pirate", *subjects)["variants"] == served


def test_pairs_lists_both_answers_and_pages(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2")
    for i in range(3):
        gateway.chat(user=f"p{i}")
    deadline = time.monotonic() + 10
    while len(gateway.admin("/rollouts/pirate/shadow-pairs")["data"]) < 3:
        assert time.monotonic() < deadline, "the shadow pairs were not recorded"
        time.sleep(0.05)

    table = rows(gateway.ok("rollouts", "pairs", "pirate"))
    assert len(table) == 3
    for row in table:
        assert row[3].startswith("v1 200 ") and row[5].startswith("v2 200 ")
        assert row[4] == row[6] == "Hello from the fake engine."
    first = table[0][0]
    output = gateway.ok("rollouts", "pairs", "pirate", "--after", first, "--limit", "1")
    assert [r[0] for r in rows(output)] == [str(int(first) + 1)]
    assert f"more: --after {int(first) + 1}" in output
    assert dict(gateway.sent[-1].url.params) == {"after": first, "limit": "1"}


# -- adapters stable -----------------------------------------------------------------------


def test_adapters_stable_serves_the_version_under_its_name(gateway: Gateway) -> None:
    assert gateway.chat().headers["x-adapter"] == "pirate@1"
    output = gateway.ok("adapters", "stable", "pirate@2", "--reason", "checked by hand")
    assert "stable version now: pirate@2" in output
    assert gateway.sent[-1].url.path == "/admin/adapters/pirate/versions/2/stable"
    assert gateway.body() == {"reason": "checked by hand"}
    assert gateway.chat().headers["x-adapter"] == "pirate@2"


def test_adapters_stable_is_refused_during_a_rollout(gateway: Gateway) -> None:
    gateway.ok("rollouts", "start", "pirate", "2")
    result = gateway.cli("adapters", "stable", "pirate@2")
    assert result.exit_code == 1
    assert "route 'pirate' has an active rollout (1)" in result.stderr
    assert gateway.chat().headers["x-adapter"] == "pirate@1"


@pytest.mark.parametrize("ref", ["pirate", "pirate@", "@2", "pirate@two", "pirate@0"])
def test_adapters_stable_needs_name_at_version(nowhere: Gateway, ref: str) -> None:
    result = nowhere.cli("adapters", "stable", ref)
    assert result.exit_code == 2
    assert "is not NAME@VERSION" in result.output
    assert nowhere.sent == []
