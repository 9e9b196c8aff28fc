"""A replica-loss drill: steady mixed traffic through a gateway in front of several engine
replicas while one of them is killed with SIGKILL, then started again.

It measures what an operator cares about: requests that failed (split into those that were
in flight when the replica died and those that started after), how long the gateway took
to take the dead replica out of rotation, and how long after the engine was healthy again
the gateway put it back with its adapters restored. Used by the integration test and by
`loadtest/replicas.py`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Outcome:
    """One request of the drill."""

    model: str
    stream: bool
    started: float
    ended: float
    status: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class DrillResult:
    """What happened around the kill."""

    outcomes: list[Outcome]
    killed_at: float
    ejected_at: float | None
    engine_healthy_at: float
    readmitted_at: float | None
    resident_before: list[str]
    resident_after: list[str]
    served_after_readmission: int

    def failed_started_after_kill(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok and o.started >= self.killed_at]

    def failed_in_flight_at_kill(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok and o.started < self.killed_at <= o.ended]

    def summary(self) -> dict[str, Any]:
        """The drill's numbers, for a report."""

        def since_kill(t: float | None) -> float | None:
            return None if t is None else round(t - self.killed_at, 3)

        return {
            "requests": len(self.outcomes),
            "ok": sum(o.ok for o in self.outcomes),
            "streams": sum(o.stream for o in self.outcomes),
            "failed_in_flight_at_kill": len(self.failed_in_flight_at_kill()),
            "failed_started_after_kill": len(self.failed_started_after_kill()),
            "ejected_after_kill_s": since_kill(self.ejected_at),
            "readmitted_after_engine_healthy_s": (
                None
                if self.readmitted_at is None
                else round(self.readmitted_at - self.engine_healthy_at, 3)
            ),
            "engine_restart_s": round(self.engine_healthy_at - self.killed_at, 3),
            "resident_before": self.resident_before,
            "resident_after": self.resident_after,
            "served_by_restarted_replica": self.served_after_readmission,
        }


def _upstream(client: httpx.Client, gateway: str, url: str) -> dict[str, Any]:
    answer = client.get(f"{gateway}/admin/upstreams").json()
    return next(u for u in answer["upstreams"] if u["url"] == url)


def _one(client: httpx.Client, gateway: str, model: str, stream: bool) -> Outcome:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something about the sea."}],
        "max_tokens": 8,
        "stream": stream,
    }
    started = time.monotonic()
    try:
        if stream:
            with client.stream("POST", f"{gateway}/v1/chat/completions", json=body) as r:
                text = "".join(r.iter_text())
            error = None if "[DONE]" in text and '"error"' not in text else "stream broke"
            return Outcome(model, True, started, time.monotonic(), r.status_code, error)
        response = client.post(f"{gateway}/v1/chat/completions", json=body)
        return Outcome(model, False, started, time.monotonic(), response.status_code)
    except httpx.HTTPError as exc:
        return Outcome(model, stream, started, time.monotonic(), 0, repr(exc))


class Traffic:
    """`workers` closed-loop clients cycling through `models`, every `stream_every`-th a
    stream, until stopped."""

    def __init__(
        self, gateway: str, models: Sequence[str], workers: int = 4, stream_every: int = 4
    ) -> None:
        self.gateway = gateway
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i, models, stream_every), daemon=True)
            for i in range(workers)
        ]

    def _run(self, index: int, models: Sequence[str], stream_every: int) -> None:
        turns = itertools.count(index)
        with httpx.Client(timeout=120.0) as client:
            while not self._stop.is_set():
                turn = next(turns)
                model = models[turn % len(models)]
                outcome = _one(client, self.gateway, model, turn % stream_every == 0)
                with self._lock:
                    self.outcomes.append(outcome)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)
        return list(self.outcomes)


def load_everywhere(gateway: str, versions: Sequence[tuple[str, int]]) -> None:
    """Load each (name, version) into every healthy replica through the admin API."""
    with httpx.Client(timeout=300.0) as client:
        for name, version in versions:
            response = client.post(
                f"{gateway}/admin/adapters/{name}/versions/{version}/load", json={}
            )
            response.raise_for_status()


def _wait(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(poll_s)
    return None


def run_drill(
    gateway: str,
    victim_url: str,
    kill: Callable[[], None],
    restart: Callable[[], None],
    models: Sequence[str],
    *,
    warm_s: float = 10.0,
    after_s: float = 10.0,
    workers: int = 4,
) -> DrillResult:
    """Traffic for `warm_s`, `kill()` the replica at `victim_url`, `restart()` it (returns
    once the engine answers its health check), wait for the gateway to re-admit it, then
    traffic for `after_s` more."""
    traffic = Traffic(gateway, models, workers)
    with httpx.Client(timeout=10.0) as admin:
        traffic.start()
        try:
            time.sleep(warm_s)
            before = _upstream(admin, gateway, victim_url)
            killed_at = time.monotonic()
            kill()
            ejected_at = _wait(
                lambda: not _upstream(admin, gateway, victim_url)["in_rotation"], 30.0
            )
            restart()
            healthy_at = time.monotonic()
            wanted = set(before["resident"])

            def back() -> bool:
                state = _upstream(admin, gateway, victim_url)
                return bool(state["in_rotation"]) and wanted <= set(state["resident"])

            readmitted_at = _wait(back, 120.0)
            time.sleep(after_s)
            after = _upstream(admin, gateway, victim_url)
        finally:
            outcomes = traffic.stop()
    served = _served_by(victim_url)
    return DrillResult(
        outcomes=outcomes,
        killed_at=killed_at,
        ejected_at=ejected_at,
        engine_healthy_at=healthy_at,
        readmitted_at=readmitted_at,
        resident_before=sorted(before["resident"]),
        resident_after=sorted(after["resident"]),
        served_after_readmission=served,
    )


def _served_by(engine_url: str) -> int:
    """Requests the engine finished since it started (vLLM's own counter)."""
    text = httpx.get(f"{engine_url}/metrics", timeout=10.0).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
