"""Train, evaluate and register every example task end to end, and show the gates refusing
the deliberately bad one: `python -m adapters.examples_run` (scripts/examples.sh).

A gateway starts on the embedded engine under `--workdir`; each example's spec is `run`
(its first version becomes stable), then the bad spec (trained on shuffled targets) must be
refused by its gates. The table printed at the end (and written as JSON beside it) holds
each task's held-out metrics for the base model and the adapter, with the CPU they were
measured on; docs/pipeline.md reports one such run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.local_gateway import REPO, LocalGateway

EXAMPLES = REPO / "adapters" / "examples"
TASKS = ("json_extract", "sql", "french")
MAIN_METRIC = {"json_extract": "exact_match", "sql": "sql_execution", "french": "chrf"}
# "Clearly beats the base model": by at least this much on the held-out set's main metric.
CLEAR_MARGIN = 0.2
# A CI log is not a terminal: wide enough for the table there too.
console = Console(width=None if sys.stdout.isatty() else 132)
app = typer.Typer(add_completion=False, help=__doc__)


def _cpu() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in {"unknown", "", "x86_64"}:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                wanted = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}
                flags = sorted(set(line.split(":", 1)[1].split()) & wanted)
                break
    except OSError:
        pass
    return {"model": model, "flags": flags, "cores": os.cpu_count(), "load": os.getloadavg()}


def _newest_report(spec_dir: Path) -> dict[str, Any]:
    found = sorted(spec_dir.glob("runs/*/*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no evaluation report under {spec_dir}")
    report: dict[str, Any] = json.loads(found[-1].read_text())
    manifest = json.loads((found[-1].parent / "manifest.json").read_text())
    report["train_seconds"] = manifest.get("train_seconds")
    report["steps"] = manifest.get("steps")
    return report


@app.command()
def main(
    workdir: Annotated[Path, typer.Option(help="Where everything goes.")] = REPO
    / ".state"
    / "examples",
    task: Annotated[
        list[str] | None,
        typer.Option(help=f"Run only this example (repeatable): {', '.join(TASKS)}."),
    ] = None,
) -> None:
    """Run every example (or those named); exit 1 when one fails or the bad one (run with
    json_extract) is not refused."""
    unknown = sorted(set(task or ()) - set(TASKS))
    if unknown:
        raise typer.BadParameter(f"no example {', '.join(unknown)}", param_hint="--task")
    tasks = [t for t in TASKS if task is None or t in task]
    examples = workdir / "examples"
    for part in ("state", "adapters", "examples"):
        shutil.rmtree(workdir / part, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        EXAMPLES, examples, ignore=shutil.ignore_patterns("runs", "counterexamples", "__pycache__")
    )
    results: dict[str, Any] = {"cpu": _cpu(), "tasks": {}}
    failures = []
    with LocalGateway(workdir) as gateway:
        for name in tasks:
            console.rule(f"{name}: run")
            began = time.monotonic()
            if gateway.adapters("run", str(examples / name / "spec.yaml"), check=False) != 0:
                failures.append(f"{name} failed")
                continue
            results["tasks"][name] = _newest_report(examples / name)
            results["tasks"][name]["run_seconds"] = time.monotonic() - began
            shortfall = _shortfall(name, results["tasks"][name])
            if shortfall:
                failures.append(shortfall)
        if "json_extract" in tasks:
            _run_bad(gateway, examples, results, failures)
    (workdir / "examples.json").write_text(json.dumps(results, indent=2) + "\n")
    _table(results)
    if failures:
        console.print("[red]" + "; ".join(failures) + "[/red]")
        raise typer.Exit(1)


def _run_bad(
    gateway: LocalGateway, examples: Path, results: dict[str, Any], failures: list[str]
) -> None:
    """The JSON task's bad spec (shuffled targets) must be refused by its gates."""
    console.rule("json_extract/bad.yaml: trained on shuffled targets")
    began = time.monotonic()
    code = gateway.adapters("run", str(examples / "json_extract" / "bad.yaml"), check=False)
    bad = _newest_report(examples / "json_extract")
    results["bad"] = {
        "exit": code,
        "gates": [g for g in bad["gates"] if not g["passed"]],
        "run_seconds": time.monotonic() - began,
    }
    if code != 1 or not results["bad"]["gates"]:
        failures.append("the bad adapter was not refused by its gates")


def _shortfall(task: str, report: dict[str, Any]) -> str | None:
    """Why the adapter does not clearly beat the base model held out (None: it does)."""
    metric = MAIN_METRIC[task]
    means = report["sets"]["held_out"]["means"]
    base, new = means["base"][metric], means["candidate"][metric]
    if new - base >= CLEAR_MARGIN:
        return None
    return f"{task}: held-out {metric} {base:.3f} → {new:.3f}, less than {CLEAR_MARGIN} above base"


def _table(results: dict[str, Any]) -> None:
    cpu = results["cpu"]
    table = Table(title=f"held-out metrics ({cpu['model']}, {', '.join(cpu['flags'])})")
    columns = ("task", "metric", "base", "adapter", "rows", "excluded", "steps", "train s", "run s")
    for column in columns:
        table.add_column(column, justify="left" if column in {"task", "metric"} else "right")
    for task, report in results["tasks"].items():
        held = report["sets"]["held_out"]
        for metric in held["means"]["candidate"]:
            base = held["means"]["base"][metric]
            new = held["means"]["candidate"][metric]
            star = " *" if metric == MAIN_METRIC[task] else ""
            table.add_row(
                task,
                metric + star,
                f"{base:.3f}",
                f"{new:.3f}",
                str(held["rows"]),
                str(len(held["excluded"])),
                str(report["steps"]),
                f"{report['train_seconds']:.0f}",
                f"{report['run_seconds']:.0f}",
            )
    console.print(table)
    bad = results.get("bad", {})
    for gate in bad.get("gates", []):
        console.print(f"bad adapter refused: {gate['gate']}: {gate['reason']}")
    if "run_seconds" in bad:
        console.print(f"bad adapter: exit {bad['exit']} after {bad['run_seconds']:.0f} s")
    subprocess.run(["uptime"], check=False)


if __name__ == "__main__":
    app()
