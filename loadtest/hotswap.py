"""Hot swap: register and serve new adapter versions while load runs against another adapter.

Starts `lora-gateway serve` (managed vLLM on the CPU, SQLite registry) over a temporary
adapter root holding the demo adapters, keeps a closed-loop load on `--load-model`, and
meanwhile
1. registers `--swaps` new versions of `--swap-model` (copies whose safetensors header
   differs, so each is new content with the same weights) and times each from the
   registration call to the first answer served by the new version (which loads it on
   demand);
2. unloads and loads `--loads` times a version through the admin API and times each load:
   the admin call end to end, and the engine's own load (from the gateway's
   `gateway_adapter_load_duration_seconds` histogram).
Prints a table; `--json FILE` writes the numbers. The load's failed requests must be zero.

    .venv/bin/python -m loadtest.hotswap --json hotswap.json
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.testing.adapters import copy_adapter
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
DEMO = ("pirate", "french", "shout")
_LOAD_SUM = re.compile(r"^gateway_adapter_load_duration_seconds_sum\{[^}]*\} (\S+)$", re.M)


@dataclass
class Background:
    """The steady load on another adapter: every status and latency."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.statuses if s != 200)


def _chat(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def _background(
    client: httpx.AsyncClient, model: str, concurrency: int, done: asyncio.Event, out: Background
) -> None:
    async def worker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=_chat(model, 16))
                status = response.status_code
            except httpx.HTTPError:
                status = -1
            out.statuses.append(status)
            out.latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _load_seconds_total(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return sum(float(v) for v in _LOAD_SUM.findall(text))


async def _swap(client: httpx.AsyncClient, root: Path, model: str, tag: int) -> dict[str, float]:
    """Register a new version of `model` and time it to its first served answer."""
    relative = f"{model}/swap{tag}"
    copy_adapter(root / model / "v1", root / relative, tag=str(tag))
    started = time.perf_counter()
    registered = await client.post("/admin/adapters", json={"name": model, "path": relative})
    if registered.status_code != 201:
        raise BenchError(f"registration failed: {registered.status_code} {registered.text}")
    register_s = time.perf_counter() - started
    ref = registered.json()["ref"]
    served = await client.post("/v1/chat/completions", json=_chat(ref, 8))
    if served.status_code != 200 or served.headers.get("x-adapter") != ref:
        raise BenchError(f"{ref} was not served: {served.status_code} {served.text[:200]}")
    return {"register_s": register_s, "first_served_s": time.perf_counter() - started}


async def _reload(client: httpx.AsyncClient, ref: str) -> dict[str, float]:
    """Unload `ref` everywhere, then time loading it again."""
    name, version = ref.split("@")
    path = f"/admin/adapters/{name}/versions/{version}"
    unloaded = await client.post(f"{path}/unload")
    if unloaded.status_code != 200:
        raise BenchError(f"unload failed: {unloaded.text}")
    engine_before = await _load_seconds_total(client)
    started = time.perf_counter()
    loaded = await client.post(f"{path}/load")
    admin_s = time.perf_counter() - started
    if loaded.status_code != 200:
        raise BenchError(f"load failed: {loaded.text}")
    return {"admin_s": admin_s, "engine_s": await _load_seconds_total(client) - engine_before}


async def measure(
    url: str, root: Path, load_model: str, swap_model: str, reload_model: str,
    swaps: int, loads: int, concurrency: int,
) -> dict[str, Any]:  # fmt: skip
    """Run the background load, the swaps and the reloads; return every number."""
    timeout = httpx.Timeout(120.0, connect=5.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        # Warm the engine and make the reloaded version known before timing anything.
        for model in (load_model, reload_model):
            await client.post("/v1/chat/completions", json=_chat(model, 4))
        done = asyncio.Event()
        background = Background()
        load_task = asyncio.create_task(
            _background(client, load_model, concurrency, done, background)
        )
        try:
            await asyncio.sleep(2.0)
            swapped = [await _swap(client, root, swap_model, i + 2) for i in range(swaps)]
            reload_ref = f"{reload_model}@1"
            reloaded = [await _reload(client, reload_ref) for _ in range(loads)]
        finally:
            done.set()
            await load_task
    return {
        "background": {
            "model": load_model,
            "requests": len(background.statuses),
            "failed": background.failed,
            "latency_s": percentiles(background.latencies),
        },
        "swaps": swapped,
        "register_s": percentiles([s["register_s"] for s in swapped]),
        "first_served_s": percentiles([s["first_served_s"] for s in swapped]),
        "reloads": reloaded,
        "load_admin_s": percentiles([r["admin_s"] for r in reloaded]),
        "load_engine_s": percentiles([r["engine_s"] for r in reloaded]),
    }


def _table(report: dict[str, Any]) -> Table:
    table = Table(title="hot swap under load")
    for column in ("measure", "n", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    rows = [
        ("register call", len(report["swaps"]), report["register_s"]),
        ("register -> first served", len(report["swaps"]), report["first_served_s"]),
        ("load (admin call)", len(report["reloads"]), report["load_admin_s"]),
        ("load (engine)", len(report["reloads"]), report["load_engine_s"]),
        ("background request", report["background"]["requests"], report["background"]["latency_s"]),
    ]
    for label, count, points in rows:
        table.add_row(
            label, str(count), *(f"{points[p] * 1000:.0f}" for p in ("p50", "p90", "p99"))
        )
    return table


@app.command()
def main(
    model_dir: Annotated[Path, typer.Option(help="Base model checkpoint")] = DEFAULT_MODEL_DIR,
    adapter_root: Annotated[Path, typer.Option(help="Demo adapters")] = DEFAULT_ADAPTER_ROOT,
    load_model: Annotated[str, typer.Option(help="Adapter under steady load")] = "french",
    swap_model: Annotated[str, typer.Option(help="Adapter that gets new versions")] = "pirate",
    reload_model: Annotated[str, typer.Option(help="Adapter unloaded and loaded")] = "shout",
    swaps: Annotated[int, typer.Option(min=1)] = 5,
    loads: Annotated[int, typer.Option(min=1)] = 10,
    concurrency: Annotated[int, typer.Option(min=1)] = 4,
    port: Annotated[int, typer.Option()] = 8161,
    out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON")] = None,
) -> None:
    """Measure register-to-first-served and load latency while another adapter is busy."""
    missing = [n for n in DEMO if not (adapter_root / n / "v1").is_dir()]
    if missing or not model_dir.is_dir():
        console.print(f"[red]missing model or adapters ({missing}); {MISSING_ASSETS}")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="hotswap-") as tmp:
        root = Path(tmp) / "adapters"
        for name in DEMO:
            shutil.copytree(adapter_root / name / "v1", root / name / "v1")
        env = child_env(
            {
                "GATEWAY_PORT": str(port),
                "GATEWAY_ENGINE__PORT": str(port + 1),
                "GATEWAY_ENGINE__MODEL_DIR": str(model_dir),
                "GATEWAY_ADAPTER_ROOT": str(root),
                "GATEWAY_STATE_DIR": str(Path(tmp) / "state"),
                "GATEWAY_HEALTH_INTERVAL_S": "0.5",
            }
        )
        url = f"http://127.0.0.1:{port}"

        def run() -> dict[str, Any]:
            with gateway_process(env, Path(tmp) / "gateway.log", url):
                return asyncio.run(
                    measure(
                        url, root, load_model, swap_model, reload_model, swaps, loads, concurrency
                    )
                )

        try:
            report, load_before, load_after = run_guarded(run)
        except BenchError as exc:
            console.print(f"[red]benchmark failed:[/] {exc}")
            raise typer.Exit(1) from exc
    console.print(_table(report))
    failed = report["background"]["failed"]
    console.print(f"background requests failed: {failed} of {report['background']['requests']}")
    report["setup"] = {
        "swaps": swaps,
        "loads": loads,
        "concurrency": concurrency,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_count": os.cpu_count(),
    }
    if out is not None:
        write_json(out, report)
        console.print(f"results written to {out}")
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
