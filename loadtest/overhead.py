"""Latency the gateway adds in front of a fast fake vLLM, at a fixed open-loop request rate.

Three processes: the gateway alone on one core; the fake engine (uvicorn) and this load
generator on the other. The same rate is sent straight to the fake ("direct") and through
the gateway ("through") in alternating blocks (ABBA order, so slow drift from other jobs
on the machine lands on both sides); the gateway's cost is the difference of the two
latency distributions. A streamed variant reports the added time to first byte.

    .venv/bin/python -m loadtest.overhead --rate 200 --duration 20
"""

from __future__ import annotations

import json
import os
import pstats
import signal
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import uvloop
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette

from gateway.testing.adapters import write_tiny_tree
from gateway.testing.fake_vllm import FakeEngineState, create_fake_vllm
from loadtest.common import (
    BIN_DIR,
    REPO_ROOT,
    BenchError,
    child_env,
    ensure_port_free,
    run_guarded,
    spawn,
    stop,
    wait_ok,
    write_json,
)
from loadtest.openloop import (
    AIM_P50_MS,
    AIM_P99_MS,
    Arrival,
    Target,
    check_once,
    measure,
    request_body,
)

BASE_MODEL = "base"
ADAPTER = "demo"
ADAPTER_ENGINE_NAME = f"{ADAPTER}--v1"
# Keeps a typo in --rate or --duration from turning into an hour-long run.
MAX_REQUESTS_PER_TARGET = 50_000

app = typer.Typer(add_completion=False, help=__doc__)
# Wide enough for the tables when the output goes to a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=140)


class Scenario(StrEnum):
    """Which request shapes to measure."""

    chat = "chat"
    stream = "stream"
    both = "both"


def fake_app() -> Starlette:
    """The fake engine as this benchmark serves it (uvicorn `--factory` target)."""
    # No request records: they would grow for the whole run and cost time per request.
    return create_fake_vllm(FakeEngineState(base_model=BASE_MODEL, keep_records=False))


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def _table(name: str, result: dict[str, Any]) -> Table:
    stream = result["stream"]
    key = "ttfb_ms" if stream else "latency_ms"
    label = "TTFB" if stream else "latency"
    table = Table(title=f"{name}: {label} in ms", title_justify="left")
    for column in (
        "target",
        "requests",
        "errors",
        "rate/s",
        "p50",
        "p90",
        "p99",
        "max",
        "total p50",
        "total p99",
        "CPU µs/req",
    ):
        table.add_column(column, justify="right" if column != "target" else "left")
    for side in ("direct", "through"):
        s = result[side]
        table.add_row(
            side,
            str(s["requests"]),
            str(s["errors"]),
            f"{s['achieved_rate']:.1f}",
            *(_fmt(s[key][p]) for p in ("p50", "p90", "p99", "max")),
            _fmt(s["latency_ms"]["p50"]),
            _fmt(s["latency_ms"]["p99"]),
            f"{s['cpu_us_per_request']:.0f}",
        )
    added = result["added_ttfb_ms" if stream else "added_latency_ms"]
    total = result["added_latency_ms"]
    verdict = "[green]aim met[/green]" if result["aim_met"] else "[red]aim missed[/red]"
    table.add_row(
        "added",
        "",
        "",
        "",
        *(_fmt(added[p]) for p in ("p50", "p90", "p99")),
        "",
        _fmt(total["p50"]),
        _fmt(total["p99"]),
        verdict,
        style="bold",
    )
    return table


def _gateway_env(fake_url: str, root: Path, checkout: Path | None) -> dict[str, str]:
    # A tiny synthetic base and adapter: the fake engine never reads them, but the gateway
    # validates and registers the adapter like any other at its first start.
    write_tiny_tree(root, ADAPTER, versions=1)
    env = child_env()
    if checkout is not None:
        # The gateway of another checkout (the same virtualenv): a before/after comparison.
        env["PYTHONPATH"] = os.pathsep.join([str(checkout.resolve()), env["PYTHONPATH"]])
    return {
        **env,
        "GATEWAY_UPSTREAM_URLS": json.dumps([fake_url]),
        "GATEWAY_BASE_MODEL_NAME": BASE_MODEL,
        "GATEWAY_ENGINE__MODEL_DIR": str(root / "model"),
        "GATEWAY_ADAPTER_ROOT": str(root / "adapters"),
        "GATEWAY_CACHE_DIR": str(root / "cache"),
        "GATEWAY_STATE_DIR": str(root / "state"),
        "GATEWAY_LOG_LEVEL": "WARNING",
    }


@dataclass(frozen=True)
class Plan:
    """One benchmark run, as asked for on the command line."""

    rate: float
    duration_s: float
    rounds: int
    warmup_s: float
    shapes: tuple[Scenario, ...]
    arrival: Arrival
    adapter: bool
    fake_port: int
    gateway_port: int
    gateway_core: int
    client_core: int
    profile: Path | None
    checkout: Path | None = None


def _fake_command(port: int) -> list[str]:
    return [
        str(BIN_DIR / "python"),
        "-m",
        "uvicorn",
        "loadtest.overhead:fake_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _gateway_command(port: int, profile: Path | None) -> list[str]:
    # `lora-gateway serve` runs uvicorn with uvloop, httptools and no access log.
    cmd = [str(BIN_DIR / "lora-gateway"), "serve", "--port", str(port)]
    if profile is None:
        return cmd
    return [str(BIN_DIR / "python"), "-m", "cProfile", "-o", str(profile.resolve()), *cmd]


def run(plan: Plan) -> dict[str, dict[str, Any]]:
    """Start the fake engine and the gateway, measure every shape, stop both."""
    fake_url = f"http://127.0.0.1:{plan.fake_port}"
    gateway_url = f"http://127.0.0.1:{plan.gateway_port}"
    direct_model = ADAPTER_ENGINE_NAME if plan.adapter else BASE_MODEL
    through_model = ADAPTER if plan.adapter else BASE_MODEL
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lg-overhead-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        for port in (plan.fake_port, plan.gateway_port):
            ensure_port_free(port)
        fake_log, gateway_log = root / "fake.log", root / "gateway.log"
        fake = spawn(_fake_command(plan.fake_port), fake_log, child_env(), {plan.client_core})
        stack.callback(stop, fake)
        wait_ok(f"{fake_url}/health", fake, 30.0, fake_log)
        gateway = spawn(
            _gateway_command(plan.gateway_port, plan.profile),
            gateway_log,
            _gateway_env(fake_url, root, plan.checkout),
            {plan.gateway_core},
        )
        # uvicorn re-raises the signal it stopped on; only SIGINT (KeyboardInterrupt) still
        # lets cProfile write its file on the way out.
        stack.callback(stop, gateway, 30.0, signal.SIGINT if plan.profile else signal.SIGTERM)
        wait_ok(f"{gateway_url}/readyz", gateway, 60.0, gateway_log)
        # The generator shares the fake's core, leaving the gateway's core to the gateway.
        os.sched_setaffinity(0, {plan.client_core})
        url_direct = f"{fake_url}/v1/chat/completions"
        url_through = f"{gateway_url}/v1/chat/completions"
        for shape in plan.shapes:
            stream = shape is Scenario.stream
            direct = Target("direct", url_direct, request_body(direct_model, stream))
            through = Target("through", url_through, request_body(through_model, stream))
            check_once(direct, through)
            console.print(
                f"[bold]{shape.value}[/bold]: {plan.rate:g} req/s, {plan.duration_s:g}s per target"
            )
            results[shape.value] = uvloop.run(
                measure(
                    direct,
                    through,
                    stream,
                    rate=plan.rate,
                    duration_s=plan.duration_s,
                    rounds=plan.rounds,
                    warmup_s=plan.warmup_s,
                    arrival=plan.arrival,
                    gateway_pid=gateway.pid,
                    fake_pid=fake.pid,
                )
            )
            console.print(_table(shape.value, results[shape.value]))
    return results


@app.command()
def main(
    rate: Annotated[float, typer.Option(help="Requests per second, to each target.")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds of load per target and shape.")] = 20.0,
    rounds: Annotated[int, typer.Option(help="Direct/through alternations.", min=1)] = 4,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds per target first.")] = 1.0,
    scenario: Annotated[Scenario, typer.Option(help="Request shapes.")] = Scenario.both,
    arrival: Annotated[Arrival, typer.Option(help="Send-time spacing.")] = Arrival.uniform,
    adapter: Annotated[
        bool, typer.Option("--adapter/--base", help="Ask for the adapter or the base model.")
    ] = False,
    fake_port: Annotated[int, typer.Option(help="Port of the fake engine.")] = 8041,
    gateway_port: Annotated[int, typer.Option(help="Port of the gateway.")] = 8042,
    gateway_core: Annotated[int, typer.Option(help="Core the gateway runs on.")] = 0,
    client_core: Annotated[int, typer.Option(help="Core of the fake and the client.")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="Run the gateway under cProfile and write its stats here (slower)."),
    ] = None,
    checkout: Annotated[
        Path | None,
        typer.Option(
            help="Run the gateway of this checkout (e.g. a `git worktree` of an older commit) "
            "with this virtualenv, for a before/after comparison."
        ),
    ] = None,
) -> None:
    """Measure the gateway's added latency (chat and streamed chat) against a fake engine."""
    if rate <= 0 or duration <= 0 or rate * duration > MAX_REQUESTS_PER_TARGET:
        raise typer.BadParameter(f"need 0 < rate * duration <= {MAX_REQUESTS_PER_TARGET}")
    plan = Plan(
        rate=rate,
        duration_s=duration,
        rounds=rounds,
        warmup_s=warmup,
        shapes=tuple(s for s in (Scenario.chat, Scenario.stream) if scenario in (s, Scenario.both)),
        arrival=arrival,
        adapter=adapter,
        fake_port=fake_port,
        gateway_port=gateway_port,
        gateway_core=gateway_core,
        client_core=client_core,
        profile=profile,
        checkout=checkout,
    )
    try:
        results, load_before, load_after = run_guarded(lambda: run(plan))
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after. "
        "added = through minus direct, per percentile; "
        "CPU: the fake's for direct, the gateway's for through"
    )
    for name, result in results.items():
        for side in ("direct", "through"):
            if result[side]["first_error"]:
                console.print(f"[red]{name} {side}: {result[side]['first_error']}[/red]")
    if json_out is not None:
        config = {
            "rate": rate,
            "duration_s": duration,
            "rounds": rounds,
            "arrival": arrival.value,
            "model": ADAPTER if adapter else BASE_MODEL,
            "gateway_core": gateway_core,
            "client_core": client_core,
            "checkout": str(checkout.resolve()) if checkout else str(REPO_ROOT),
            "aim_ms": {"p50": AIM_P50_MS, "p99": AIM_P99_MS},
        }
        report = {
            "benchmark": "gateway-overhead",
            "config": config,
            "load_average": {"before": load_before, "after": load_after},
            "cpu_count": os.cpu_count(),
            "results": results,
        }
        write_json(json_out, report)
        console.print(f"results written to {json_out}")
    if profile is not None and profile.is_file():
        console.print(f"gateway profile: {profile} (top functions by own time)")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    app()
