"""Rollouts across real gateway processes, against the fake engine (the rollout state in the
registry and the sticky assignment are under test here, not vLLM).

- Two gateway processes on one PostgreSQL registry put every one of 10,000 subjects on the
  same variant at each canary weight (1, 5, 25, 50%); the canary's share is the weight
  within one point; raising the weight only adds subjects to the canary; and real chat
  requests through either process carry the variant and adapter its assignments announce.
- A gateway killed with `kill -9` comes back with its rollout in the same stage, step,
  weight and pause, every `rollout:*` audit event intact, serves canary users the candidate
  once it has warmed it up again, and takes the rollout on to promotion (SQLite and
  PostgreSQL).
- A gateway killed while a thread floods it with advance / pause / resume comes back with
  the rollout exactly where its last `rollout:*` audit event says it went: a command's
  state change and its audit event are one transaction.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from gateway.testing.adapters import write_tiny_tree
from gateway.testing.processes import GatewayHandle, Processes, answer_of, postgres_database

T = TypeVar("T")
ROUTE = "pirate"
STABLE, CANARY = f"{ROUTE}@1", f"{ROUTE}@2"
SUBJECTS = [f"subject-{i:05d}" for i in range(10_000)]
ENV = {
    "GATEWAY_REGISTRY_POLL_S": "0.2",
    "GATEWAY_ROLLOUT__FLUSH_S": "0.2",
    # 10,000 subjects in one assignments request.
    "GATEWAY_MAX_BODY_BYTES": "2000000",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    with postgres_database("rollout") as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database("rollout") as url:
        yield url


@contextlib.contextmanager
def _processes(tmp: Path, database_url: str) -> Iterator[Processes]:
    """The fake engine running, the pirate adapter's two versions on disk; all killed after."""
    write_tiny_tree(tmp, ROUTE, versions=2)
    with Processes(tmp, database_url, env=dict(ENV)) as running:
        running.start_engine()
        yield running


# -- the admin API -------------------------------------------------------------------------


def _register_versions(url: str) -> None:
    """pirate@1 (the stable version: registered first) and pirate@2."""
    for version in (1, 2):
        body = {"name": ROUTE, "path": f"{ROUTE}/v{version}", "reason": "rollout test"}
        row = answer_of(httpx.post(f"{url}/admin/adapters", json=body, timeout=30))
        assert row["version"] == version


def _start(url: str, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"route": ROUTE, "version": 2, "reason": "rollout test"}
    if plan is not None:
        body["plan"] = plan
    return answer_of(httpx.post(f"{url}/admin/rollouts", json=body, timeout=60))


def _command(url: str, command: str, *, force: bool = False) -> dict[str, Any]:
    body = {"reason": f"test {command}", "force": force}
    return answer_of(httpx.post(f"{url}/admin/rollouts/{ROUTE}/{command}", json=body, timeout=30))


def _status(url: str) -> dict[str, Any]:
    return answer_of(httpx.get(f"{url}/admin/rollouts/{ROUTE}", timeout=10))


def _rollout_events(url: str) -> list[dict[str, Any]]:
    """The route's `rollout:*` audit events, oldest first."""
    params: dict[str, str | int] = {"adapter": ROUTE, "limit": 1000}
    events = answer_of(httpx.get(f"{url}/admin/audit", params=params, timeout=10))["data"]
    return [e for e in events if e["action"].startswith("rollout:")]


def _chat(url: str, user: str) -> httpx.Response:
    body = {
        "model": ROUTE,
        "messages": [{"role": "user", "content": "Ahoy?"}],
        "max_tokens": 4,
        "user": user,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def _wait_until(check: Callable[[], T | None], what: str, timeout_s: float = 20.0) -> T:
    """Poll `check` until it returns something other than None (or fail after the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def _warm(gateway: GatewayHandle) -> None:
    """Wait until this process has warmed the candidate up (it serves only stable before)."""
    _wait_until(
        lambda: True if _status(gateway.url)["warm_here"] else None,
        f"{gateway.name} to warm the candidate up",
    )


def _at_weight(gateway: GatewayHandle, weight: float, subjects: list[str]) -> list[str]:
    """The subjects' variants once this process's live view shows the rollout at `weight`."""

    def check() -> list[str] | None:
        body = {"subjects": subjects}
        url = f"{gateway.url}/admin/rollouts/{ROUTE}/assignments"
        response = httpx.post(url, json=body, timeout=30)
        if response.status_code == 404:
            return None  # this process has not read the rollout from the registry yet
        answer = answer_of(response)
        variants: list[str] = answer["variants"]
        return variants if answer["weight"] == weight else None

    return _wait_until(check, f"{gateway.name} to see weight {weight}")


def _check_requests(gateway: GatewayHandle, variants: dict[str, str]) -> None:
    """Real chat requests of these users carry the variant and adapter announced for them."""
    for user, variant in variants.items():
        response = _chat(gateway.url, user)
        assert response.headers["x-variant"] == variant, (gateway.name, user)
        assert response.headers["x-adapter"] == (CANARY if variant == "canary" else STABLE)


def _some_of_each(variants: dict[str, str], n: int) -> dict[str, str]:
    """Up to `n` canary and `n` stable subjects out of an assignment."""
    canary = [s for s, v in variants.items() if v == "canary"][:n]
    stable = [s for s, v in variants.items() if v == "stable"][:n]
    assert canary and stable
    return {s: variants[s] for s in canary + stable}


# -- the tests -----------------------------------------------------------------------------


def test_two_gateway_processes_agree_on_every_subject(tmp_path: Path, postgres_url: str) -> None:
    with _processes(tmp_path, postgres_url) as processes:
        a = processes.start_gateway("a")
        b = processes.start_gateway("b")
        _register_versions(a.url)
        started = _start(a.url)
        assert (started["stage"], started["warm_here"]) == ("shadow", True)
        # In shadow everybody is on stable, on both processes.
        assert set(_at_weight(a, 0.0, SUBJECTS)) == {"stable"}
        assert set(_at_weight(b, 0.0, SUBJECTS)) == {"stable"}
        _warm(b)

        canary_before: set[str] = set()
        for step, weight in enumerate((1.0, 5.0, 25.0, 50.0)):
            moved = _command(a.url, "advance", force=True)
            assert (moved["stage"], moved["step"], moved["weight"]) == ("canary", step, weight)
            on_a = _at_weight(a, weight, SUBJECTS)
            on_b = _at_weight(b, weight, SUBJECTS)
            assert on_a == on_b, f"the processes disagree at {weight}%"
            canary = {s for s, v in zip(SUBJECTS, on_a, strict=True) if v == "canary"}
            share = 100 * len(canary) / len(SUBJECTS)
            assert abs(share - weight) <= 1.0, (weight, share)
            # Sticky: raising the weight only adds subjects to the canary.
            assert canary_before <= canary, sorted(canary_before - canary)[:10]
            canary_before = canary

            variants = dict(zip(SUBJECTS, on_a, strict=True))
            chosen = _some_of_each(variants, 6)
            for gateway in (a, b):
                _check_requests(gateway, chosen)
        assert _status(b.url)["warm_here"] is True


def test_killed_gateway_comes_back_in_the_same_stage_and_weight(
    tmp_path: Path, database_url: str
) -> None:
    with _processes(tmp_path, database_url) as processes:
        gateway = processes.start_gateway()
        _register_versions(gateway.url)
        _start(gateway.url)
        _command(gateway.url, "advance", force=True)
        _command(gateway.url, "advance", force=True)
        paused = _command(gateway.url, "pause")
        where = ("canary", 1, 5.0, True, True)
        before = (paused["stage"], paused["step"], paused["weight"], paused["paused"])
        assert (*before, paused["active"]) == where
        events = _rollout_events(gateway.url)
        assert [e["action"] for e in events] == [
            "rollout:start",
            "rollout:advance",
            "rollout:advance",
            "rollout:pause",
        ]
        users = SUBJECTS[:2000]
        variants = dict(zip(users, _at_weight(gateway, 5.0, users), strict=True))
        chosen = _some_of_each(variants, 5)
        # Paused, the canary keeps its share: its users stay on the candidate.
        _check_requests(gateway, chosen)
        # Reading the status writes the pending request counts first.
        counted = _status(gateway.url)["samples"]
        assert {"step": 1, "name": "canary 2 (5.0%)", "counts": {"canary": 5, "stable": 5}} in (
            counted
        )

        gateway.kill()
        gateway = processes.start_gateway()

        status = _status(gateway.url)
        again = (status["stage"], status["step"], status["weight"], status["paused"])
        assert (*again, status["active"]) == where
        assert status["id"] == paused["id"]
        assert status["samples"] == counted
        after = _rollout_events(gateway.url)
        assert [(e["id"], e["action"]) for e in after] == [(e["id"], e["action"]) for e in events]
        assert after == events
        # The candidate is warmed up again by this new process before it gets canary users.
        _warm(gateway)
        assert dict(zip(users, _at_weight(gateway, 5.0, users), strict=True)) == variants
        _check_requests(gateway, chosen)

        _command(gateway.url, "resume")
        for step, weight in ((2, 25.0), (3, 50.0), (4, 100.0)):
            moved = _command(gateway.url, "advance", force=True)
            assert (moved["stage"], moved["step"], moved["weight"]) == ("canary", step, weight)
        done = _command(gateway.url, "promote", force=True)
        assert (done["stage"], done["active"], done["weight"]) == ("promoted", False, 100.0)
        # The candidate is the route's stable version now, without a rollout in between.
        for user in chosen:
            response = _chat(gateway.url, user)
            assert response.headers["x-adapter"] == CANARY
            assert "x-variant" not in response.headers
        actions = [e["action"] for e in _rollout_events(gateway.url)]
        assert actions[len(events) :] == [
            "rollout:resume",
            "rollout:advance",
            "rollout:advance",
            "rollout:advance",
            "rollout:promote",
        ]


def test_killed_mid_command_flood_keeps_state_and_audit_in_step(
    tmp_path: Path, database_url: str
) -> None:
    # Fifty canary steps, so the flood never runs out of steps to advance to.
    plan = {"canary": [{"weight": float(w)} for w in range(1, 51)]}
    with _processes(tmp_path, database_url) as processes:
        gateway = processes.start_gateway()
        _register_versions(gateway.url)
        _start(gateway.url, plan)
        answered: list[dict[str, Any]] = []
        refused: list[str] = []
        stop = threading.Event()
        commands = ("advance", "pause", "resume")
        url = gateway.url

        def flood() -> None:
            body = {"reason": "flood", "force": True}
            with httpx.Client(base_url=url, timeout=10) as client:
                for index in range(10_000):
                    if stop.is_set():
                        return
                    command = commands[index % len(commands)]
                    try:
                        response = client.post(f"/admin/rollouts/{ROUTE}/{command}", json=body)
                    except httpx.HTTPError:
                        return  # the gateway died under this command
                    if response.status_code != 200:
                        refused.append(f"{command}: {response.status_code} {response.text}")
                        return
                    answered.append(response.json())

        worker = threading.Thread(target=flood, name="command-flood", daemon=True)
        worker.start()
        deadline = time.monotonic() + 30
        while len(answered) < 20 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        # Somewhere inside the next command (they take 15 to 60 ms each): before, in
        # or after its transaction.
        time.sleep(random.uniform(0.0, 0.04))
        gateway.kill()
        stop.set()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert not refused, refused
        assert len(answered) >= 20, len(answered)

        gateway = processes.start_gateway()
        status = _status(gateway.url)
        events = _rollout_events(gateway.url)
        assert events[0]["action"] == "rollout:start"
        flooded = events[1:]
        assert [e["action"] for e in flooded] == [
            f"rollout:{commands[i % len(commands)]}" for i in range(len(flooded))
        ]
        # Every answered command left its event; at most the one in flight left one more.
        assert len(answered) <= len(flooded) <= len(answered) + 1, (len(answered), len(flooded))
        last = flooded[-1]["detail"]
        stored = {"stage": status["stage"], "step": status["step"], "weight": status["weight"]}
        assert stored == last["to"], (status, flooded[-1])
        assert status["paused"] == last["paused"]
        advances = sum(e["action"] == "rollout:advance" for e in flooded)
        assert status["step"] == advances - 1
        assert status["weight"] == float(advances)
        # The last answer the flood got is the state its event recorded.
        seen = answered[-1]
        recorded = flooded[len(answered) - 1]["detail"]
        assert {"stage": seen["stage"], "step": seen["step"], "weight": seen["weight"]} == (
            recorded["to"]
        )
        # The process that came back still steers the rollout.
        if status["paused"]:
            _command(gateway.url, "resume")
        moved = _command(gateway.url, "advance", force=True)
        assert (moved["step"], moved["weight"]) == (advances, float(advances + 1))
