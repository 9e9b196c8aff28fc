"""Webhooks survive their receiver: down (two minutes for the report, 20 s in the suite),
then hanging, then back.

One gateway process on PostgreSQL with the fake engine, where the candidate answers every
request after its warm-up with a 500. The receiver is down (nothing listens on its port)
while the analysis advances the rollout out of shadow and the error rate's hard ceiling
rolls it back: the rollback happens on time, whatever the receiver does. The receiver then
hangs (it accepts and never answers), then answers. Every message is delivered: none is
lost, and any duplicate carries the same `webhook-id`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from gateway.testing.adapters import write_tiny_tree
from gateway.testing.processes import Processes, answer_of, postgres_database
from tests.integration.hook_receiver import Receiver

ROUTE = "pirate"
# Two minutes down and 20 s hanging in the report (HOOK_OUTAGE_DOWN_S=120
# HOOK_OUTAGE_HANGING_S=20, docs/benchmarks.md); the suite waits less.
DOWN_S = float(os.environ.get("HOOK_OUTAGE_DOWN_S", "20"))
HANGING_S = float(os.environ.get("HOOK_OUTAGE_HANGING_S", "10"))
SLOS = """
routes:
  pirate:
    signals:
      - {signal: error_rate, critical: true, margin: 0.1, min_samples: 20,
         ceiling: {value: 0.5, min_samples: 10}}
"""
ENV = {
    "GATEWAY_ROLLOUT__FLUSH_S": "0.2",
    "GATEWAY_QUALITY__FLUSH_S": "0.2",
    "GATEWAY_ANALYSIS__INTERVAL_S": "0.2",
    "GATEWAY_HOOKS__ATTEMPT_TIMEOUT_S": "3",
    "GATEWAY_HOOKS__MAX_BACKOFF_S": "5",
}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    write_tiny_tree(tmp_path, ROUTE, versions=2)
    with postgres_database("hooks") as url, Processes(tmp_path, url, env=dict(ENV)) as running:
        running.start_engine(failing={f"{ROUTE}--v2": "500@1"})
        yield running


def test_every_event_reaches_a_receiver_that_was_down_then_hanging(
    processes: Processes, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = processes.start_gateway("a")
    url = gateway.url
    for version in (1, 2):
        answer_of(
            httpx.post(f"{url}/admin/adapters", json={"name": ROUTE, "path": f"{ROUTE}/v{version}"})
        )
    yaml = {"content-type": "application/yaml"}
    assert httpx.put(f"{url}/admin/slos", content=SLOS, headers=yaml).status_code == 200
    receiver = Receiver(up=False)
    hook = answer_of(httpx.post(f"{url}/admin/hooks", json={"url": receiver.url}))
    receiver.secret = hook["secret"]

    down_since = time.monotonic()
    plan = {"shadow": {"sample_rate": 1.0, "min_samples": 0}, "canary": [{"weight": 50}]}
    answer_of(
        httpx.post(f"{url}/admin/rollouts", json={"route": ROUTE, "version": 2, "plan": plan})
    )
    stop = threading.Event()
    served: list[tuple[float, str | None, int]] = []

    def users() -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                body = {
                    "model": ROUTE,
                    "user": f"u{i}",
                    "messages": [{"role": "user", "content": "hi"}],
                }
                response = client.post(f"{url}/v1/chat/completions", json=body)
                served.append(
                    (time.time(), response.headers.get("x-variant"), response.status_code)
                )
                i += 1
                time.sleep(0.01)

    traffic = threading.Thread(target=users, daemon=True)
    traffic.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = answer_of(httpx.get(f"{url}/admin/rollouts/{ROUTE}"))
            if status["stage"] == "rolled_back":
                break
            time.sleep(0.1)
    finally:
        stop.set()
        traffic.join(timeout=30)
    assert status["stage"] == "rolled_back", status
    [rollback] = [e for e in status["events"] if e["action"] == "rollout:rollback"]
    assert rollback["actor"] == "analysis"
    # On time: within seconds of the candidate's tenth failure, with the receiver down.
    failures = [at for at, variant, code in served if variant == "canary" and code >= 500]
    tenth = failures[9]
    rolled_back_at = datetime.fromisoformat(rollback["at"]).timestamp()
    assert rolled_back_at - tenth < 5.0, rolled_back_at - tenth
    pending = answer_of(httpx.get(f"{url}/admin/hooks/{hook['id']}/messages"))["data"]
    assert pending and all(m["status"] == "pending" for m in pending), pending

    # Down for DOWN_S, then hanging, then up.
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
    receiver.hanging.set()
    receiver.start()
    time.sleep(HANGING_S)
    receiver.hanging.clear()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        messages = answer_of(
            httpx.get(f"{url}/admin/hooks/{hook['id']}/messages", params={"limit": 1000})
        )["data"]
        if messages and all(m["status"] == "delivered" for m in messages):
            break
        time.sleep(0.5)
    receiver.stop()
    assert all(m["status"] == "delivered" for m in messages), [m["status"] for m in messages]
    sent_ids = {m["id"] for m in messages}
    received = Counter(m["headers"]["webhook-id"] for m in receiver.verified)
    assert set(received) == sent_ids  # none lost, none invented
    assert receiver.rejected == 0
    kinds = {m["payload"]["type"] for m in receiver.verified}
    assert {"rollout.started", "rollout.step_advanced", "rollout.rolled_back"} <= kinds
    attempts = sum(len(m["attempts"]) for m in messages)
    with capsys.disabled():
        print(
            f"\nreceiver down {DOWN_S:.0f} s, then hanging {HANGING_S:.0f} s: "
            f"{len(sent_ids)} messages, all delivered after {attempts} attempts; "
            f"{sum(received.values()) - len(received)} duplicates (same webhook-id); "
            f"rollback {rolled_back_at - tenth:.2f} s after the candidate's tenth failure"
        )
