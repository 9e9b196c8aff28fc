"""Two gateway processes on one PostgreSQL registry with a one-minute registry poll: each
follows the other's changes within a second, which only LISTEN/NOTIFY can explain.

Against the fake engine (the change feed is under test here, not vLLM): a registration, a
retirement and a rollout's start, canary step and rollback made through one process are
served by the other within `FOLLOW_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.testing.adapters import write_tiny_tree
from gateway.testing.processes import GatewayHandle, Processes, answer_of, postgres_database

FOLLOW_S = 1.0
ROUTE = "pirate"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """The fake engine and two versions of `pirate` on disk, on a fresh PostgreSQL database."""
    write_tiny_tree(tmp_path, ROUTE, versions=2)
    env = {"GATEWAY_REGISTRY_POLL_S": "60"}
    with postgres_database("follow") as url, Processes(tmp_path, url, env=env) as running:
        running.start_engine()
        yield running


def _models(gateway: GatewayHandle) -> set[str]:
    data = answer_of(httpx.get(f"{gateway.url}/v1/models", timeout=10))["data"]
    return {m["id"] for m in data}


def _listening(gateway: GatewayHandle) -> bool:
    registry = answer_of(httpx.get(f"{gateway.url}/readyz", timeout=10))["registry"]
    return registry == {"changes": "notify", "listening": True, "poll_s": 60.0}


def _served(gateway: GatewayHandle) -> str:
    """Which version answers a `pirate` request of a fixed user on this process."""
    body = {"model": ROUTE, "user": "u-1", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-adapter"]


def _seconds_until(check: Callable[[], bool], what: str, within_s: float = FOLLOW_S) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if check():
            took = time.monotonic() - started
            print(f"followed {what} in {took * 1000:.0f} ms")
            return took
        time.sleep(0.01)
    raise AssertionError(f"not followed within {within_s} s: {what}")


def test_a_change_on_one_process_is_served_by_the_other_within_a_second(
    processes: Processes,
) -> None:
    a = processes.start_gateway("a")
    b = processes.start_gateway("b")
    for gateway in (a, b):
        _seconds_until(lambda g=gateway: _listening(g), f"{gateway.name} to LISTEN", 10)
    assert _models(b) == {"smollm2"}

    for version in (1, 2):
        body = {"name": ROUTE, "path": f"{ROUTE}/v{version}"}
        answer_of(httpx.post(f"{a.url}/admin/adapters", json=body, timeout=30))
        ref = f"{ROUTE}@{version}"
        _seconds_until(lambda r=ref: r in _models(b), f"the registration of {ref}")

    plan = {"shadow": {"sample_rate": 0.0}, "canary": [{"weight": 100}]}
    body = {"route": ROUTE, "version": 2, "plan": plan}
    answer_of(httpx.post(f"{a.url}/admin/rollouts", json=body, timeout=60))
    answer_of(httpx.post(f"{a.url}/admin/rollouts/{ROUTE}/advance", timeout=30))
    # The other process warms the candidate up itself before it sends anyone there.
    _seconds_until(lambda: _served(b) == f"{ROUTE}@2", "the canary at 100%", within_s=10)

    answer_of(httpx.post(f"{a.url}/admin/rollouts/{ROUTE}/rollback", json={"reason": "bad"}))
    _seconds_until(lambda: _served(b) == f"{ROUTE}@1", "the rollback")

    answer_of(
        httpx.post(f"{a.url}/admin/adapters/{ROUTE}/versions/2/retire", json={"reason": "bad"})
    )
    _seconds_until(lambda: f"{ROUTE}@2" not in _models(b), "the retirement")
