"""Scoring never slows requests: the gateway's latency with every scorer at 100% vs none.

One gateway in front of the fast fake engine (the overhead benchmark's processes and
cores: the gateway alone on core 0, the fake and this generator on core 1). Open-loop load
at `--rate` to the adapter `demo`, in blocks that alternate OFF (an empty scorer
configuration) and ON (every verifier kind and a built-in reward head, each at sample rate
1.0, and every answer's text kept) in ABBA order; the scorer configuration is swapped
through `PUT /admin/scorers` between blocks. Reports each side's p50/p99, the difference,
the gateway's CPU per request and the scores written.

Then a flood: `--flood-rate` requests per second for `--flood-duration` seconds, twice,
with every scorer on and a scoring queue of `--queue` jobs (the reward head scores a few
hundred answers a second, so the queue overfills): requests must all succeed, the drops
be counted, and the gateway's memory stay flat between the two floods.

    .venv/bin/python -m loadtest.scoring --json scoring.json
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import httpx
import numpy as np
import typer
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from gateway.config import DEFAULT_CACHE_DIR
from loadtest.common import (
    BenchError,
    cpu_seconds,
    ensure_port_free,
    machine,
    machine_line,
    percentiles,
    run_guarded,
    spawn,
    stop,
    wait_ok,
    write_json,
)
from loadtest.openloop import REQUEST_TIMEOUT_S, Arrival, Samples, Target, _block, request_body
from loadtest.overhead import ADAPTER, _fake_command, _gateway_command, _gateway_env

app = typer.Typer(add_completion=False, help=__doc__)
console = Console() if sys.stdout.isatty() else Console(width=140)
# The aims for what scoring at 100% may add to the request path.
AIM_P50_MS = 0.2
AIM_P99_MS = 1.0
OFF = "routes: {}\n"
ON = f"""
routes:
  {ADAPTER}:
    sample_rate: 1.0
    scorers:
      - {{kind: json}}
      - {{kind: json_schema, schema: {{type: object, required: [answer]}}}}
      - {{kind: regex, must: ['hello'], must_not: ['\\bsorry\\b']}}
      - {{kind: length, min_chars: 5, max_chars: 2000}}
      - {{kind: refusal}}
      - {{kind: language, expect: en}}
      - {{kind: caps_share, max: 0.5}}
"""
REWARD = "      - {kind: reward, head: pirate}\n"


def _metric(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _total(url: str, name: str, **labels: str) -> float:
    return sum(
        v
        for k, v in _metric(url, name).items()
        if all((key, value) in k for key, value in labels.items())
    )


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _put_scorers(url: str, source: str) -> None:
    response = httpx.put(f"{url}/admin/scorers", content=source, timeout=60)
    if response.status_code != 200:
        raise BenchError(f"PUT /admin/scorers: {response.status_code} {response.text[:300]}")


async def _measure(
    target: Target, url: str, pid: int, rate: float, duration_s: float, rounds: int, on: str
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    sides = {"off": Samples(), "on": Samples()}
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:
        for source in (OFF, on):
            _put_scorers(url, source)
            await _block(s, target, False, rate, 1.0, Arrival.uniform, rng, Samples())
        for i in range(rounds):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                _put_scorers(url, on if name == "on" else OFF)
                out = sides[name]
                gc.collect()
                gc.disable()
                before = cpu_seconds(pid)
                try:
                    await _block(
                        s, target, False, rate, duration_s / rounds, Arrival.uniform, rng, out
                    )
                finally:
                    gc.enable()
                out.cpu_s += cpu_seconds(pid) - before
    result: dict[str, Any] = {}
    for name, samples in sides.items():
        latency = [v * 1000 for v in samples.latency]
        result[name] = {
            "requests": samples.sent,
            "errors": samples.errors,
            "first_error": samples.first_error,
            "latency_ms": percentiles(latency, (50, 90, 99)),
            "cpu_us_per_request": samples.cpu_s / max(1, samples.sent) * 1e6,
        }
    result["added_ms"] = {
        p: result["on"]["latency_ms"][p] - result["off"]["latency_ms"][p]
        for p in ("p50", "p90", "p99")
    }
    result["aim_met"] = (
        result["added_ms"]["p50"] <= AIM_P50_MS and result["added_ms"]["p99"] <= AIM_P99_MS
    )
    return result


async def _flood(target: Target, rate: float, duration_s: float) -> Samples:
    rng = np.random.default_rng(1)
    out = Samples()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        headers={"content-type": "application/json"},
    ) as session:
        await _block(session, target, False, rate, duration_s, Arrival.uniform, rng, out)
    return out


def run(
    rate: float,
    duration_s: float,
    rounds: int,
    flood_rate: float,
    flood_s: float,
    queue: int,
    reward: bool,
) -> dict[str, Any]:
    """Start the fake and the gateway, measure OFF/ON, then flood twice."""
    fake_port, gateway_port = 8041, 8042
    fake_url, url = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{gateway_port}"
    with tempfile.TemporaryDirectory(prefix="lg-scoring-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        for port in (fake_port, gateway_port):
            ensure_port_free(port)
        fake_log, gateway_log = root / "fake.log", root / "gateway.log"
        base_env = _gateway_env(fake_url, root, None)
        fake = spawn(_fake_command(fake_port), fake_log, base_env, {1})
        stack.callback(stop, fake)
        wait_ok(f"{fake_url}/health", fake, 30.0, fake_log)
        env = {
            **base_env,
            # The prepared classifier model and demo reward heads (`lora-gateway prepare`).
            "GATEWAY_CACHE_DIR": str(DEFAULT_CACHE_DIR),
            "GATEWAY_QUALITY__MAX_SCORE_QUEUE": str(queue),
        }
        gateway = spawn(_gateway_command(gateway_port, None), gateway_log, env, {0})
        stack.callback(stop, gateway)
        wait_ok(f"{url}/readyz", gateway, 60.0, gateway_log)
        target = Target("through", f"{url}/v1/chat/completions", request_body(ADAPTER, False))
        os.sched_setaffinity(0, {1})
        console.print(f"[bold]OFF vs ON[/bold]: {rate:g} req/s, {duration_s:g}s per side")
        on = ON + REWARD if reward else ON
        result = uvloop.run(_measure(target, url, gateway.pid, rate, duration_s, rounds, on))
        result["scores_written"] = _total(url, "gateway_quality_scores_total")
        _put_scorers(url, on)
        floods = []
        for n in range(2):
            dropped_before = _total(url, "gateway_quality_dropped_total")
            rss_before = _rss_mib(gateway.pid)
            samples = uvloop.run(_flood(target, flood_rate, flood_s))
            floods.append(
                {
                    "requests": samples.sent,
                    "errors": samples.errors,
                    "first_error": samples.first_error,
                    "dropped": _total(url, "gateway_quality_dropped_total") - dropped_before,
                    "rss_mib_before": rss_before,
                    "rss_mib_after": _rss_mib(gateway.pid),
                    "queue_depth_after": _total(url, "gateway_quality_queue_depth"),
                }
            )
            console.print(f"flood {n + 1}: {floods[-1]}")
        result["floods"] = floods
    return result


def _table(result: dict[str, Any]) -> Table:
    table = Table("", "p50 ms", "p90 ms", "p99 ms", "gateway CPU µs/req", "errors")
    for side in ("off", "on"):
        r = result[side]
        table.add_row(
            side,
            *(f"{r['latency_ms'][p]:.3f}" for p in ("p50", "p90", "p99")),
            f"{r['cpu_us_per_request']:.0f}",
            str(r["errors"]),
        )
    added = result["added_ms"]
    verdict = "meets" if result["aim_met"] else "misses"
    table.add_row(
        "added (on - off)",
        *(f"{added[p]:+.3f}" for p in ("p50", "p90", "p99")),
        "",
        f"{verdict} +{AIM_P50_MS} / +{AIM_P99_MS} ms",
        style="bold",
    )
    return table


@app.command()
def main(
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds of load per side.")] = 20.0,
    rounds: Annotated[int, typer.Option(min=1, help="OFF/ON alternations.")] = 4,
    flood_rate: Annotated[float, typer.Option(help="Flood requests per second.")] = 600.0,
    flood_duration: Annotated[float, typer.Option(help="Seconds of each flood.")] = 10.0,
    queue: Annotated[int, typer.Option(min=10, help="The scoring queue's size.")] = 2000,
    reward: Annotated[
        bool, typer.Option("--reward/--no-reward", help="Include a built-in reward head.")
    ] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Measure what scoring at 100% adds to requests, then overfill the scoring queue."""
    try:
        result, load_before, load_after = run_guarded(
            lambda: run(rate, duration, rounds, flood_rate, flood_duration, queue, reward)
        )
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(_table(result))
    console.print(f"scores written: {result['scores_written']:.0f}")
    console.print(
        f"{machine_line()}; load average {load_before:.2f} before, {load_after:.2f} after"
    )
    if json_out is not None:
        write_json(
            json_out,
            {
                "benchmark": "scoring-overhead",
                "machine": machine(),
                "config": {
                    "rate": rate,
                    "duration_s": duration,
                    "rounds": rounds,
                    "queue": queue,
                    "reward": reward,
                },
                "load_average": {"before": load_before, "after": load_after},
                "results": result,
            },
        )


if __name__ == "__main__":
    app()
