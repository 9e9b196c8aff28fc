"""Shadow cost: the primary's latency and the engine's capacity with shadow at 100% vs off.

Starts `lora-gateway serve` (managed vLLM on the CPU, SQLite registry) over a temporary
adapter root holding `pirate` v1 and a copy of it registered as v2 (same weights, so the
shadow answers cost what the primary's do), then sends open-loop Poisson load at `--rate`
requests per second to `model: "pirate"` in blocks that alternate OFF (no rollout) and
SHADOW (a rollout of v2 in shadow with sample rate 1.0), in ABAB order after a warm-up.
Per block: the primary's latency (whole non-streamed answer), errors, shadow copies sent,
dropped and completed (the gateway's counters), and the engine's CPU seconds (its whole
process group) per primary request. Then the engine's capacity: `--saturate` closed-loop
clients for `--saturate-duration` seconds with shadow OFF, then SHADOW; the primary's
completions per second fall by the share of the engine that shadow copies take. Prints the
ratios SHADOW/OFF; `--json FILE` writes every number.

    .venv/bin/python -m loadtest.shadow --json shadow.json
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from gateway.testing.adapters import copy_adapter
from gateway.upstream.supervisor import read_pid_file
from loadtest.common import (
    DEFAULT_ADAPTER_ROOT,
    DEFAULT_MODEL_DIR,
    MISSING_ASSETS,
    BenchError,
    child_env,
    gateway_process,
    percentiles,
    run_guarded,
    write_json,
)

app = typer.Typer(add_completion=False, help=__doc__)
console = Console()
ROUTE = "pirate"
PROMPTS = (
    "Tell me about the sea.",
    "Describe a cat.",
    "Give me a tip for sleeping well.",
    "What should I cook tonight?",
)
# The aim for the primary's latency with shadow at 100%, as a ratio to shadow off.
AIM_RATIO = 1.05


def group_cpu_seconds(pgid: int) -> float:
    """User plus system CPU seconds of every live process in a process group."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # After the command name: pgrp is field 5, utime 14, stime 15 (1-based).
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def _counters(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "gateway_shadow_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["outcome"]] = sample.value
    return out


async def _block(
    client: httpx.AsyncClient, rate: float, duration_s: float, max_tokens: int, seed: int
) -> dict[str, Any]:
    """Open-loop Poisson arrivals for `duration_s`; each answer timed end to end."""
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    tokens: list[int] = []
    errors = 0

    async def one(index: int) -> None:
        nonlocal errors
        body = _chat_body(index, max_tokens, f"bench-{seed}-{index}")
        started = time.perf_counter()
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError:
            errors += 1
            return
        if response.status_code != 200:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)
        tokens.append(int(response.json()["usage"]["completion_tokens"]))

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    at = 0.0
    index = 0
    while at < duration_s:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
        index += 1
        at += float(rng.exponential(1.0 / rate))
    await asyncio.gather(*tasks)
    return {
        "sent": index,
        "errors": errors,
        "latency_s": percentiles(latencies),
        "latencies": latencies,
        "completion_tokens": sum(tokens),
        "wall_s": time.perf_counter() - start,
    }


def _chat_body(index: int, max_tokens: int, user: str) -> dict[str, Any]:
    return {
        "model": ROUTE,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "user": user,
    }


async def _closed(
    client: httpx.AsyncClient, concurrency: int, duration_s: float, max_tokens: int
) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last is answered."""
    done: list[int] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker(number: int) -> None:
        nonlocal errors
        index = 0
        while time.perf_counter() < deadline:
            body = _chat_body(index, max_tokens, f"closed-{number}-{index}")
            index += 1
            try:
                response = await client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code != 200:
                errors += 1
                continue
            done.append(int(response.json()["usage"]["completion_tokens"]))

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "completed": len(done),
        "errors": errors,
        "wall_s": wall,
        "requests_per_s": len(done) / wall,
        "tokens_per_s": sum(done) / wall,
    }


async def _set_shadow(client: httpx.AsyncClient, on: bool) -> None:
    if on:
        plan = {"shadow": {"sample_rate": 1.0}}
        response = await client.post(
            "/admin/rollouts", json={"route": ROUTE, "version": 2, "plan": plan}
        )
    else:
        response = await client.post(f"/admin/rollouts/{ROUTE}/abort", json={"reason": "bench"})
    if response.status_code not in (200, 201):
        raise BenchError(f"rollout {'start' if on else 'abort'} failed: {response.text}")


async def measure(
    url: str,
    state_dir: Path,
    rate: float,
    duration_s: float,
    rounds: int,
    max_tokens: int,
    saturate: tuple[int, float],
) -> dict[str, Any]:
    """Alternate OFF and SHADOW blocks; return each block's numbers."""
    timeout = httpx.Timeout(300.0, connect=5.0)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        registered = await client.post("/admin/adapters", json={"name": ROUTE, "path": "pirate/v2"})
        if registered.status_code not in (200, 201):
            raise BenchError(f"registering pirate@2 failed: {registered.text}")
        record = read_pid_file(state_dir / "engine.pid")
        if record is None:
            raise BenchError("no engine pid file")
        pgid = record[0]
        # Warm-up: both versions loaded and compiled paths taken before any timing.
        await _set_shadow(client, True)
        await _block(client, rate, min(10.0, duration_s), max_tokens, seed=999)
        await asyncio.sleep(3)
        await _set_shadow(client, False)
        blocks = []
        for number in range(2 * rounds):
            shadow = number % 2 == 1
            if shadow:
                await _set_shadow(client, True)
            counters = await _counters(client)
            cpu = group_cpu_seconds(pgid)
            result = await _block(client, rate, duration_s, max_tokens, seed=number)
            # Shadow copies still running finish before the block's engine time is read.
            await asyncio.sleep(3)
            result["engine_cpu_s"] = group_cpu_seconds(pgid) - cpu
            after = await _counters(client)
            result["shadow"] = {k: after.get(k, 0.0) - counters.get(k, 0.0) for k in after}
            result["mode"] = "shadow" if shadow else "off"
            blocks.append(result)
            if shadow:
                await _set_shadow(client, False)
            console.print(
                f"block {number + 1}/{2 * rounds} {result['mode']}: p50 "
                f"{result['latency_s']['p50'] * 1000:.0f} ms, p99 "
                f"{result['latency_s']['p99'] * 1000:.0f} ms, errors {result['errors']}"
            )
        capacity = {}
        for mode in ("off", "shadow"):
            if mode == "shadow":
                await _set_shadow(client, True)
            capacity[mode] = await _closed(client, saturate[0], saturate[1], max_tokens)
            capacity[mode]["shadow"] = await _counters(client)
            console.print(f"saturated {mode}: {capacity[mode]['requests_per_s']:.2f} primary req/s")
        await _set_shadow(client, False)
    summary = _summary(blocks)
    summary["capacity"] = capacity
    summary["capacity"]["primary_throughput_lost"] = (
        1 - capacity["shadow"]["requests_per_s"] / capacity["off"]["requests_per_s"]
    )
    return {"blocks": blocks, "summary": summary}


def _summary(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("off", "shadow"):
        chosen = [b for b in blocks if b["mode"] == mode]
        latencies = [x for b in chosen for x in b["latencies"]]
        done = len(latencies)
        shadow = {k: sum(b["shadow"].get(k, 0.0) for b in chosen) for k in ("sent", "dropped")}
        shadow["completed"] = sum(b["shadow"].get("completed", 0.0) for b in chosen)
        out[mode] = {
            "requests": done,
            "errors": sum(b["errors"] for b in chosen),
            "latency_s": percentiles(latencies),
            "engine_cpu_s_per_request": sum(b["engine_cpu_s"] for b in chosen) / max(done, 1),
            "shadow": shadow,
        }
    off, on = out["off"], out["shadow"]
    out["ratio"] = {
        "p50": on["latency_s"]["p50"] / off["latency_s"]["p50"],
        "p99": on["latency_s"]["p99"] / off["latency_s"]["p99"],
        "engine_cpu_per_request": on["engine_cpu_s_per_request"] / off["engine_cpu_s_per_request"],
    }
    # The engine's capacity spent on shadow copies: the extra engine CPU per primary
    # request, as a share of all the engine CPU spent while shadowing.
    extra = on["engine_cpu_s_per_request"] - off["engine_cpu_s_per_request"]
    out["shadow_share_of_engine_cpu"] = extra / on["engine_cpu_s_per_request"]
    return out


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="primary latency, shadow 100% vs off")
    for column in ("mode", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "engine CPU/req"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in ("off", "shadow"):
        row = summary[mode]
        points = row["latency_s"]
        table.add_row(
            mode,
            str(row["requests"]),
            str(row["errors"]),
            *(f"{points[p] * 1000:.0f}" for p in ("p50", "p90", "p99")),
            f"{row['engine_cpu_s_per_request']:.2f} s",
        )
    return table


@app.command()
def main(
    model_dir: Annotated[Path, typer.Option(help="Base model checkpoint")] = DEFAULT_MODEL_DIR,
    adapter_root: Annotated[Path, typer.Option(help="Demo adapters")] = DEFAULT_ADAPTER_ROOT,
    rate: Annotated[float, typer.Option(min=0.01, help="Requests per second (Poisson)")] = 1.0,
    duration: Annotated[float, typer.Option(min=5, help="Seconds per block")] = 60.0,
    rounds: Annotated[int, typer.Option(min=1, help="OFF/SHADOW pairs")] = 2,
    max_tokens: Annotated[int, typer.Option(min=1)] = 32,
    shadow_concurrency: Annotated[int, typer.Option(min=1)] = 4,
    saturate: Annotated[int, typer.Option(min=1, help="Closed-loop clients")] = 4,
    saturate_duration: Annotated[float, typer.Option(min=5)] = 45.0,
    port: Annotated[int, typer.Option()] = 8171,
    out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON")] = None,
) -> None:
    """Measure what shadowing every request costs the primary and the engine."""
    if not (adapter_root / ROUTE / "v1").is_dir() or not model_dir.is_dir():
        console.print(f"[red]missing model or adapters; {MISSING_ASSETS}")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="shadow-") as tmp:
        root = Path(tmp) / "adapters"
        shutil.copytree(adapter_root / ROUTE / "v1", root / ROUTE / "v1")
        # Registered during the run (not seeded), so v1 stays the name's stable version.
        staging = Path(tmp) / "v2"
        copy_adapter(adapter_root / ROUTE / "v1", staging, tag="shadow-bench")
        state_dir = Path(tmp) / "state"
        env = child_env(
            {
                "GATEWAY_PORT": str(port),
                "GATEWAY_ENGINE__PORT": str(port + 1),
                "GATEWAY_ENGINE__MODEL_DIR": str(model_dir),
                "GATEWAY_ADAPTER_ROOT": str(root),
                "GATEWAY_STATE_DIR": str(state_dir),
                "GATEWAY_HEALTH_INTERVAL_S": "0.5",
                "GATEWAY_ROLLOUT__SHADOW_CONCURRENCY": str(shadow_concurrency),
            }
        )
        url = f"http://127.0.0.1:{port}"

        def run() -> dict[str, Any]:
            with gateway_process(env, Path(tmp) / "gateway.log", url):
                shutil.move(str(staging), root / ROUTE / "v2")
                return asyncio.run(
                    measure(
                        url,
                        state_dir,
                        rate,
                        duration,
                        rounds,
                        max_tokens,
                        (saturate, saturate_duration),
                    )
                )

        try:
            report, load_before, load_after = run_guarded(run)
        except BenchError as exc:
            console.print(f"[red]benchmark failed:[/] {exc}")
            raise typer.Exit(1) from exc
    summary = report["summary"]
    console.print(_table(summary))
    ratio = summary["ratio"]
    console.print(
        f"primary latency SHADOW/OFF: p50 x{ratio['p50']:.3f}, p99 x{ratio['p99']:.3f} "
        f"(aim <= {AIM_RATIO}); engine CPU per primary request x"
        f"{ratio['engine_cpu_per_request']:.2f}; shadow share of engine CPU "
        f"{summary['shadow_share_of_engine_cpu']:.0%}; shadow copies {summary['shadow']['shadow']}"
    )
    capacity = summary["capacity"]
    lost = capacity["primary_throughput_lost"]
    console.print(
        f"saturated ({saturate} clients): primary {capacity['off']['requests_per_s']:.2f}"
        f" -> {capacity['shadow']['requests_per_s']:.2f} req/s with shadow on "
        f"({lost:.0%} of the engine's throughput went to shadow copies)"
    )
    for block in report["blocks"]:
        del block["latencies"]
    report["setup"] = {
        "rate": rate,
        "duration_s": duration,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "shadow_concurrency": shadow_concurrency,
        "saturate": saturate,
        "saturate_duration_s": saturate_duration,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_count": os.cpu_count(),
    }
    if out is not None:
        write_json(out, report)
        console.print(f"results written to {out}")


if __name__ == "__main__":
    app()
