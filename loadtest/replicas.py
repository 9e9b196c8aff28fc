"""Replica loss: two real vLLM CPU engines (one core each) behind one gateway under steady
mixed traffic (base model and demo adapters, every fourth request a stream); one engine is
killed with SIGKILL, then started again as a supervisor would.

Prints requests failed (in flight at the kill / started after it), how long the gateway took
to eject the dead replica, how long the engine took to come back, and how long after its
health check passed the gateway re-admitted it with its adapters restored.

    python -m loadtest.replicas [--json result.json]
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gateway.config import DEFAULT_CACHE_DIR
from gateway.engine.cpu import served_checkpoint, served_dtype, stored_checkpoint
from gateway.testing.drill import load_everywhere, run_drill
from gateway.testing.server import free_port
from gateway.upstream.launcher import EngineProcess, EngineSpec
from loadtest.common import (
    DEFAULT_ADAPTER_ROOT,
    MISSING_ASSETS,
    child_env,
    finish,
    gateway_process,
    machine_line,
    run_guarded,
)

console = Console()
app = typer.Typer(add_completion=False, help=__doc__)
MODELS = ("base", "pirate", "french", "base", "shout", "cowboy")


def _engine(core: str, log_file: Path) -> EngineProcess:
    checkpoint = served_checkpoint("auto")
    model_dir = (
        DEFAULT_CACHE_DIR / "models" / f"smollm2-135m-instruct-{stored_checkpoint(checkpoint)}"
    )
    if not (model_dir / "config.json").is_file():
        raise typer.BadParameter(f"no model at {model_dir}: {MISSING_ASSETS}")
    return EngineProcess(
        EngineSpec(
            model_dir=model_dir,
            dtype=served_dtype(checkpoint),
            served_name="base",
            port=free_port(),
            max_loras=4,
            omp_threads_bind=core,
            log_file=log_file,
            start_timeout_s=900.0,
        )
    )


def drill(warm_s: float, after_s: float, workers: int) -> dict[str, Any]:
    """Start both engines and the gateway, run the drill, stop everything."""
    tmp = Path(tempfile.mkdtemp(prefix="replicas-"))
    engines = [_engine("0", tmp / "engine0.log"), _engine("1", tmp / "engine1.log")]
    try:
        for engine in engines:
            engine.start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = child_env(
            {
                "GATEWAY_PORT": str(port),
                "GATEWAY_STATE_DIR": str(tmp / "state"),
                "GATEWAY_ADAPTER_ROOT": str(DEFAULT_ADAPTER_ROOT),
                "GATEWAY_UPSTREAM_URLS": ",".join(e.url for e in engines),
                "GATEWAY_BASE_MODEL_NAME": "base",
                "GATEWAY_HEALTH_INTERVAL_S": "0.5",
            }
        )
        victim = engines[1]

        def kill() -> None:
            assert victim.pid is not None
            os.killpg(victim.pid, signal.SIGKILL)

        def restart() -> None:
            victim.stop(grace_s=0.0)
            victim.start()

        with gateway_process(env, tmp / "gateway.log", url):
            load_everywhere(url, [(name, 1) for name in ("pirate", "french", "shout", "cowboy")])
            result = run_drill(
                url,
                victim.url,
                kill,
                restart,
                MODELS,
                warm_s=warm_s,
                after_s=after_s,
                workers=workers,
            )
        return {**result.summary(), "workers": workers, "logs": str(tmp)}
    finally:
        for engine in engines:
            engine.stop()


@app.command()
def main(
    warm_s: Annotated[float, typer.Option(help="Traffic before the kill (s).")] = 20.0,
    after_s: Annotated[float, typer.Option(help="Traffic after re-admission (s).")] = 20.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Concurrent clients.")] = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers here.")] = None,
) -> None:
    """Kill one of two engine replicas under load and watch the gateway recover."""
    console.print(machine_line())
    summary, load_before, load_after = run_guarded(lambda: drill(warm_s, after_s, workers))
    table = Table("measure", "value")
    for key in (
        "requests",
        "ok",
        "streams",
        "failed_in_flight_at_kill",
        "failed_started_after_kill",
        "ejected_after_kill_s",
        "engine_restart_s",
        "readmitted_after_engine_healthy_s",
        "resident_before",
        "resident_after",
        "served_by_restarted_replica",
    ):
        table.add_row(key, str(summary[key]))
    console.print(table)
    finish(console, json_out, load_before, load_after, result=summary)
    if summary["failed_started_after_kill"] or summary["readmitted_after_engine_healthy_s"] is None:
        sys.exit(1)


if __name__ == "__main__":
    app()
