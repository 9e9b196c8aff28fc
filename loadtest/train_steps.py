"""Seconds per training step of each example task on this CPU, and what its spec's whole
training would take: whether the three minutes a task may take hold here.

Each task's spec is read as `python -m adapters train` reads it (data, replay, settings);
`--steps` steps are trained (the first included, so the estimate errs long) in float32 and,
where the CPU computes bf16 natively, in bf16 too, as training picks; nothing is written
besides a temporary directory. Prints seconds per step, the spec's steps and the estimate
for them, with the CPU and the load average; `--json FILE` writes them.

    .venv/bin/python -m loadtest.train_steps --json train_steps.json
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.examples_run import EXAMPLES, TASKS
from adapters.pipeline import prepare_data
from adapters.spec import load_spec
from adapters.train import MANIFEST, native_bf16, train_lora
from gateway.config import Settings
from gateway.engine.basemodel import model_dir
from loadtest.common import finish, machine_line, run_guarded

# What a task's training may take on two cores.
BUDGET_S = 180.0
console = Console()
app = typer.Typer(add_completion=False, help=__doc__)


def measure(task: str, steps: int, bf16: bool, base_dir: Path) -> dict[str, Any]:
    """Train `steps` steps of `task`'s spec; its seconds per step and the spec's estimate."""
    loaded = load_spec(EXAMPLES / task / "spec.yaml")
    data = prepare_data(loaded)
    spec_config = loaded.spec.train_config(len(data.training))
    config = replace(spec_config, steps=steps, bf16_autocast=bf16)
    with tempfile.TemporaryDirectory(prefix="train-steps-") as tmp:
        out = train_lora(base_dir, list(data.training), Path(tmp) / "run", config, name=task)
        seconds = float(json.loads((out / MANIFEST).read_text())["train_seconds"])
    per_step = seconds / steps
    return {
        "task": task,
        "matmuls": "bf16" if bf16 else "float32",
        "steps": steps,
        "seconds_per_step": round(per_step, 3),
        "spec_steps": spec_config.steps,
        "spec_seconds": round(per_step * spec_config.steps, 1),
    }


@app.command()
def main(
    steps: Annotated[int, typer.Option(min=2, help="Steps to time per task.")] = 8,
    task: Annotated[list[str] | None, typer.Option(help="Only this task (repeatable).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers here.")] = None,
) -> None:
    """Time every example task's training steps on this CPU."""
    unknown = sorted(set(task or ()) - set(TASKS))
    if unknown:
        raise typer.BadParameter(f"no example {', '.join(unknown)}", param_hint="--task")
    console.print(machine_line())
    base_dir = model_dir(Settings().cache_dir, "bf16")
    if not (base_dir / "config.json").is_file():
        raise typer.BadParameter(f"no base model at {base_dir}: run `lora-gateway prepare`")
    precisions = [False, True] if native_bf16() else [False]

    def run() -> list[dict[str, Any]]:
        return [
            measure(name, steps, bf16, base_dir)
            for name in TASKS
            if task is None or name in task
            for bf16 in precisions
        ]

    results, load_before, load_after = run_guarded(run)
    table = Table("task", "matmuls")
    for column in ("s/step", "spec steps", "spec s", f"≤ {BUDGET_S:.0f} s"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["task"],
            r["matmuls"],
            f"{r['seconds_per_step']:.2f}",
            str(r["spec_steps"]),
            f"{r['spec_seconds']:.0f}",
            "yes" if r["spec_seconds"] <= BUDGET_S else "NO",
        )
    console.print(table)
    finish(
        console,
        json_out,
        load_before,
        load_after,
        results=results,
    )


if __name__ == "__main__":
    app()
