"""The open-loop load generator of the overhead benchmark: send on schedule, time each answer.

Requests leave at their planned times whether or not earlier ones were answered, so a slow
target cannot slow the load down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import numpy as np

from loadtest.common import BenchError, cpu_seconds, percentiles

REQUEST_TIMEOUT_S = 10.0
# The aim for the gateway's added latency at 200 requests/s.
AIM_P50_MS = 1.0
AIM_P99_MS = 5.0


class Arrival(StrEnum):
    """How send times are spaced."""

    uniform = "uniform"
    poisson = "poisson"


@dataclass
class Samples:
    """What one target saw: per-request timings in seconds, and failures."""

    latency: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0
    send_window_s: float = 0.0
    intervals: int = 0
    cpu_s: float = 0.0
    first_error: str | None = None

    def failed(self, reason: str) -> None:
        """Count a failed request, keeping the first reason for the report."""
        self.errors += 1
        self.first_error = self.first_error or reason


@dataclass(frozen=True)
class Target:
    """One side of the comparison: a URL and the request body sent to it."""

    name: str
    url: str
    body: bytes


def request_body(model: str, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 16,
        "stream": stream,
    }
    return json.dumps(payload).encode()


async def _one(
    session: aiohttp.ClientSession, target: Target, stream: bool, due: float, out: Samples
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(target.url, data=target.body) as resp:
            if stream:
                tail = await resp.content.readany()
                ttfb = time.perf_counter() - started
                async for chunk in resp.content.iter_any():
                    tail = (tail + chunk)[-64:]
                ok = resp.status == 200 and tail.rstrip().endswith(b"data: [DONE]")
            else:
                await resp.read()
                ttfb = time.perf_counter() - started
                ok = resp.status == 200
            finished = time.perf_counter()
            if not ok:
                out.failed(f"{target.name}: status {resp.status}")
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.failed(f"{target.name}: {type(exc).__name__}: {exc}")
        return
    out.latency.append(finished - started)
    out.ttfb.append(ttfb)
    out.lag.append(started - due)


async def _block(
    session: aiohttp.ClientSession,
    target: Target,
    stream: bool,
    rate: float,
    duration_s: float,
    arrival: Arrival,
    rng: np.random.Generator,
    out: Samples,
) -> None:
    """Send `rate * duration_s` requests open-loop (never waiting for answers), then wait."""
    count = max(2, round(rate * duration_s))
    if arrival is Arrival.poisson:
        gaps = rng.exponential(1.0 / rate, count - 1)
    else:
        gaps = np.full(count - 1, 1.0 / rate)
    offsets = [0.0, *np.cumsum(gaps).tolist()]
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.01
    first_send = last_send = start
    for i, offset in enumerate(offsets):
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        if i == 0:
            first_send = now
        last_send = now
        tasks.add(asyncio.create_task(_one(session, target, stream, due, out)))
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5.0)
    for task in pending:
        task.cancel()
        out.failed(f"{target.name}: no answer within {REQUEST_TIMEOUT_S:.0f}s")
    await asyncio.gather(*pending, return_exceptions=True)
    out.sent += count
    out.intervals += count - 1
    out.send_window_s += last_send - first_send


def _summary(samples: Samples) -> dict[str, Any]:
    ms = 1000.0
    latency = [v * ms for v in samples.latency]
    ttfb = [v * ms for v in samples.ttfb]
    answered = len(samples.latency) + samples.errors
    return {
        "requests": samples.sent,
        "ok": len(samples.latency),
        "errors": samples.errors,
        "first_error": samples.first_error,
        "achieved_rate": samples.intervals / samples.send_window_s if samples.send_window_s else 0,
        "latency_ms": {**percentiles(latency), "max": max(latency, default=float("nan"))},
        "ttfb_ms": {**percentiles(ttfb), "max": max(ttfb, default=float("nan"))},
        "send_lag_ms_p99": percentiles([v * ms for v in samples.lag], (99,))["p99"],
        "cpu_us_per_request": samples.cpu_s / answered * 1e6 if answered else float("nan"),
    }


def _added(direct: dict[str, Any], through: dict[str, Any], key: str) -> dict[str, float]:
    return {p: through[key][p] - direct[key][p] for p in ("p50", "p90", "p99")}


async def measure(
    direct: Target,
    through: Target,
    stream: bool,
    *,
    rate: float,
    duration_s: float,
    rounds: int,
    warmup_s: float,
    arrival: Arrival,
    gateway_pid: int,
    fake_pid: int,
) -> dict[str, Any]:
    """Alternate direct and through blocks at `rate`; return both summaries and the difference."""
    rng = np.random.default_rng(0)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    headers = {"content-type": "application/json"}
    results = {direct.name: Samples(), through.name: Samples()}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        for target in (direct, through):
            await _block(session, target, stream, rate, warmup_s, arrival, rng, Samples())
        block_s = duration_s / rounds
        for i in range(rounds):
            # ABBA: a linear drift in machine load weighs the same on both sides.
            order = (direct, through) if i % 2 == 0 else (through, direct)
            for target in order:
                out = results[target.name]
                # Client-side GC pauses would only add noise to both distributions.
                gc.collect()
                gc.disable()
                pid = gateway_pid if target is through else fake_pid
                cpu_before = cpu_seconds(pid)
                try:
                    await _block(session, target, stream, rate, block_s, arrival, rng, out)
                finally:
                    gc.enable()
                out.cpu_s += cpu_seconds(pid) - cpu_before
    summary_direct = _summary(results[direct.name])
    summary_through = _summary(results[through.name])
    added_latency = _added(summary_direct, summary_through, "latency_ms")
    added_ttfb = _added(summary_direct, summary_through, "ttfb_ms")
    headline = added_ttfb if stream else added_latency
    return {
        "stream": stream,
        "direct": summary_direct,
        "through": summary_through,
        "added_latency_ms": added_latency,
        "added_ttfb_ms": added_ttfb,
        "aim_met": headline["p50"] <= AIM_P50_MS and headline["p99"] <= AIM_P99_MS,
    }


def check_once(direct: Target, through: Target) -> None:
    """One request each way before measuring, so a misconfiguration fails loudly."""
    import httpx

    with httpx.Client(timeout=5.0) as client:
        # Through first: a request for an adapter makes the gateway load it into the engine,
        # which is then what the direct requests name.
        for target in (through, direct):
            response = client.post(
                target.url, content=target.body, headers={"content-type": "application/json"}
            )
            if response.status_code != 200:
                raise BenchError(f"{target.name}: {response.status_code} {response.text[:300]}")
