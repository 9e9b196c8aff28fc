"""The analysis leader across real gateway processes on one PostgreSQL registry (the fake
engine answers; the leadership, the stored state and the guarded actions are under test).

Two gateways run the analysis loop; one holds the advisory lock. Traffic flows through
both while the analysis walks a good candidate through its steps. The leader is killed with
`kill -9` while the rollout is in its first canary step: the other gateway leads within
seconds, its verdicts carry on from the stored state and aggregates (the candidate's sample
count does not restart), the rollout is promoted, and the audit trail shows every automatic
action exactly once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.adapters import write_tiny_tree
from gateway.testing.processes import GatewayHandle, Processes, answer_of, postgres_database

ROUTE = "pirate"
ENV = {
    "GATEWAY_REGISTRY_POLL_S": "0.2",
    "GATEWAY_ROLLOUT__FLUSH_S": "0.2",
    "GATEWAY_QUALITY__FLUSH_S": "0.2",
    "GATEWAY_ANALYSIS__INTERVAL_S": "0.2",
}
SLOS = """
routes:
  pirate:
    signals:
      - {signal: error_rate, critical: true, margin: 0.5, min_samples: 20,
         ceiling: {value: 0.5, min_samples: 10}}
"""
PLAN = {
    "shadow": {"sample_rate": 1.0, "min_samples": 5},
    "canary": [{"weight": 50, "min_samples": 60}, {"weight": 100, "min_samples": 40}],
}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    write_tiny_tree(tmp_path, ROUTE, versions=2)
    with postgres_database("analysis") as url, Processes(tmp_path, url, env=dict(ENV)) as running:
        running.start_engine()
        yield running


def _analysis(gateway: GatewayHandle) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{gateway.url}/admin/rollouts/{ROUTE}/analysis", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _wait(check: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Traffic(threading.Thread):
    """Chat requests through the live gateways, each from a new user, until stopped."""

    def __init__(self, gateways: list[GatewayHandle]) -> None:
        super().__init__(daemon=True)
        self.gateways = gateways
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stopped.is_set():
                for gateway in self.gateways:
                    if not gateway.alive:
                        continue
                    body = {
                        "model": ROUTE,
                        "user": f"user-{self.sent}",
                        "messages": [{"role": "user", "content": "Ahoy?"}],
                        "max_tokens": 4,
                    }
                    with contextlib.suppress(httpx.HTTPError):  # the killed gateway
                        client.post(f"{gateway.url}/v1/chat/completions", json=body)
                    self.sent += 1
                time.sleep(0.01)


def test_a_killed_leader_is_replaced_within_seconds_and_nothing_is_done_twice(
    processes: Processes,
) -> None:
    a = processes.start_gateway("a")
    b = processes.start_gateway("b")
    for version in (1, 2):
        body = {"name": ROUTE, "path": f"{ROUTE}/v{version}"}
        answer_of(httpx.post(f"{a.url}/admin/adapters", json=body, timeout=30))
    put = httpx.put(
        f"{a.url}/admin/slos", content=SLOS, headers={"content-type": "application/yaml"}
    )
    assert put.status_code == 200, put.text
    body = {"route": ROUTE, "version": 2, "plan": PLAN}
    answer_of(httpx.post(f"{a.url}/admin/rollouts", json=body, timeout=60))
    traffic = Traffic([a, b])
    traffic.start()
    try:
        # The leader takes the rollout out of shadow into its first canary step.
        _wait(
            lambda: (s := _analysis(a)) and s["stage"] == "canary" and s["step"] == 0,
            "the first canary step",
        )
        leaders = {g.name: (_analysis(g) or {}).get("leader") for g in (a, b)}
        assert sorted(leaders.values()) == [False, True], leaders
        leader, follower = (a, b) if leaders["a"] else (b, a)
        before = _wait(
            lambda: (
                (s := _analysis(follower))
                and s["verdict"]
                and s["verdict"]["stage"] == "canary"
                and s
            ),
            "a verdict in canary",
        )
        counted_before = _error_signal(before["verdict"])["candidate_n"]
        leader.kill()
        killed_at = time.monotonic()
        _wait(lambda: (s := _analysis(follower)) and s["leader"], "a new leader", timeout_s=30)
        took_over_s = time.monotonic() - killed_at
        promoted = _wait(
            lambda: (s := _analysis(follower)) and s["stage"] == "promoted" and s,
            "the promotion",
            timeout_s=120,
        )
    finally:
        traffic.stopped.set()
        traffic.join(timeout=10)
    print(f"\nthe follower led {took_over_s:.2f} s after the leader was killed")
    assert took_over_s < 10
    assert promoted["phase"] == "Successful"
    verdicts = answer_of(
        httpx.get(f"{follower.url}/admin/rollouts/{ROUTE}/verdicts", params={"limit": 1000})
    )["data"]
    by_leader = {v["leader"] for v in verdicts}
    assert len(by_leader) == 2, by_leader  # both replicas led in turn
    new = [v for v in verdicts if v["leader"] in _identity_of(follower, verdicts)]
    first_new_canary = min(
        (v for v in new if v["stage"] == "canary"), key=lambda v: v["id"], default=None
    )
    assert first_new_canary is not None
    # The new leader carries on from the stored aggregates: nothing counted restarts.
    assert _error_signal(first_new_canary)["candidate_n"] >= counted_before
    events = answer_of(
        httpx.get(f"{follower.url}/admin/audit", params={"adapter": ROUTE, "limit": 1000})
    )["data"]
    automatic = [
        (e["action"], e["detail"]["from"]["step"], e["detail"]["to"]["step"])
        for e in events
        if e["actor"] == "analysis" and e["action"].startswith("rollout:")
    ]
    assert automatic == [
        ("rollout:advance", -1, 0),
        ("rollout:advance", 0, 1),
        ("rollout:promote", 1, 1),
    ], automatic


def _error_signal(verdict: dict[str, Any]) -> dict[str, Any]:
    signal: dict[str, Any] = next(s for s in verdict["signals"] if s["name"] == "error_rate")
    return signal


def _identity_of(gateway: GatewayHandle, verdicts: list[dict[str, Any]]) -> set[str]:
    """The leader identities (`host:pid`) of this gateway process."""
    pid = str(gateway.proc.pid)
    return {v["leader"] for v in verdicts if v["leader"].endswith(f":{pid}")}
