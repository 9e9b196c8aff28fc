"""The commands' work, step by step, with what each step prints: train, evaluate, release.

`run` is all of them in order. Each step reads what the one before left (the run directory,
its lineage record), so the steps may also be run one at a time, and a re-run of an
unchanged spec finds everything done and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from adapters.client import GatewayClient, GatewayError
from adapters.evaluate import (
    Gate,
    check_gates,
    eval_sets,
    evaluate,
    report_json,
    write_report,
)
from adapters.lineage import Lineage
from adapters.pipeline import (
    PreparedData,
    ensure_route_documents,
    lineage_of,
    prepare_data,
    register,
    train_run,
)
from adapters.spec import LoadedSpec, check_base_layers
from adapters.train import compute_dtype, device_name
from gateway.registry.validation import BaseModelInfo


class StepFailed(RuntimeError):
    """A step could not finish: what to tell the user (the command exits 1)."""


@dataclass
class Context:
    """What every step needs: the spec, where things are, the gateway."""

    loaded: LoadedSpec
    base_dir: Path
    adapter_root: Path
    client: GatewayClient
    console: Console


@dataclass
class Staged:
    """A trained run registered (unserved) on the gateway."""

    run_dir: Path
    version: int
    lineage: Lineage
    data: PreparedData
    # The gateway it is registered on: what happened to the run on another one is not
    # what happened here.
    gateway: str

    def record(self, event: str, **fields: Any) -> None:
        """Add an event about this version on this gateway to the run's lineage."""
        self.lineage.record(event, gateway=self.gateway, version=self.version, **fields)

    def events(self) -> list[dict[str, Any]]:
        """The lineage's events about this version on this gateway, oldest first."""
        return [
            event
            for event in self.lineage.read().get("events", [])
            if event.get("version") == self.version and event.get("gateway") == self.gateway
        ]

    def passed(self) -> bool:
        """Whether its latest evaluation here passed its gates."""
        evaluated = [e for e in self.events() if e.get("event") == "evaluated"]
        return bool(evaluated and evaluated[-1].get("passed") is True)


@contextmanager
def _bar(console: Console, label: str) -> Iterator[Progress]:
    columns = (
        TextColumn(f"[bold]{label}[/bold] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def train_step(ctx: Context) -> tuple[Path, PreparedData]:
    """Read the data and train, unless this exact run exists: (run dir, data)."""
    spec = ctx.loaded.spec
    data = prepare_data(ctx.loaded)
    base = BaseModelInfo.from_model_dir(ctx.base_dir.name, ctx.base_dir)
    check_base_layers(ctx.loaded, base.num_layers)
    config = spec.train_config(len(data.training))
    device = device_name()
    ctx.console.print(
        f"[bold]{spec.name}[/bold]: {len(data.training)} training rows, "
        f"{len(data.held_out)} held out; {config.steps} steps of {config.batch_size} on "
        f"{device} ({compute_dtype(config, device)})"
    )
    with _bar(ctx.console, "train") as progress:
        task = progress.add_task("steps", total=config.steps, extra="")

        def on_step(step: int, steps: int, loss: float) -> None:
            progress.update(task, completed=step, extra=f"loss {loss:.4f}")

        run_dir, trained = train_run(ctx.loaded, data, ctx.base_dir, on_step=on_step)
        if not trained:
            progress.update(task, completed=config.steps, extra="(trained before)")
    ctx.console.print(f"run: {run_dir}{'' if trained else ' (unchanged spec: not retrained)'}")
    return run_dir, data


def stage_step(ctx: Context, run_dir: Path, data: PreparedData) -> Staged:
    """Register the run's files, unserved, as the next version of the spec's adapter."""
    name = ctx.loaded.spec.name
    try:
        version, created = register(
            ctx.client, run_dir, ctx.adapter_root, name, reason=f"trained from {ctx.loaded.file}"
        )
    except GatewayError as exc:
        raise StepFailed(f"the gateway refused {name}: {exc.message}") from exc
    number = int(version["version"])
    lineage = lineage_of(run_dir)
    if not lineage.has("registered", gateway=ctx.client.url, version=number):
        lineage.record(
            "registered", gateway=ctx.client.url, version=number, sha256=version["sha256"]
        )
    ctx.console.print(
        f"registered {name}@{number} ({'new' if created else 'the same files as before'}; "
        f"state {version['state']})"
    )
    return Staged(run_dir, number, lineage, data, ctx.client.url)


def evaluate_step(ctx: Context, staged: Staged) -> tuple[dict[str, Any], list[Gate]]:
    """Score the new version, the base and the stable version; apply the gates."""
    spec = ctx.loaded.spec
    name = spec.name
    try:
        variants = {"candidate": f"{name}@{staged.version}", "base": ctx.client.base_model()}
        stable = ctx.client.stable_version(name)
    except GatewayError as exc:
        raise StepFailed(f"cannot ask the gateway: {exc.message}") from exc
    if stable is not None and stable != staged.version:
        variants["stable"] = f"{name}@{stable}"
    sets = eval_sets(ctx.loaded, staged.data.training, staged.data.held_out)
    for eval_set in sets:
        if eval_set.excluded:
            ctx.console.print(
                f"[yellow]{eval_set.name}: {len(eval_set.excluded)} of {eval_set.total} rows "
                "overlap the training data and are left out[/yellow]"
            )
    with _bar(ctx.console, "evaluate") as progress:
        tasks: dict[tuple[str, str], Any] = {}

        def tick(set_name: str, variant: str, done: int, total: int) -> None:
            key = (set_name, variant)
            if key not in tasks:
                tasks[key] = progress.add_task(f"{set_name} {variant}", total=total, extra="")
            progress.update(tasks[key], completed=done)

        try:
            results = evaluate(ctx.loaded, ctx.client, sets, variants, tick)
        except GatewayError as exc:
            raise StepFailed(f"evaluation failed at the gateway: {exc.message}") from exc
    gates = check_gates(ctx.loaded, results)
    report = report_json(name, variants, results, gates)
    _, md_path = write_report(staged.run_dir, report)
    summary = {r.name: r.means.get("candidate", {}) for r in results}
    staged.record("evaluated", passed=report["passed"], scores=summary)
    for gate in gates:
        mark = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
        ctx.console.print(f"  {mark} {gate.name}: {gate.reason}")
    ctx.console.print(f"report: {md_path}")
    return report, gates


def refuse(ctx: Context, staged: Staged, gates: list[Gate]) -> str:
    """Retire a version the gates refused (it never serves); return what failed."""
    failed = [g for g in gates if not g.passed]
    named = "; ".join(f"{g.name} ({g.reason})" for g in failed)
    name = ctx.loaded.spec.name
    try:
        ctx.client.call(
            "POST",
            f"/admin/adapters/{name}/versions/{staged.version}/retire",
            body={"reason": f"refused by gates: {named}"[:1024]},
        )
    except GatewayError as exc:
        if exc.status != 409:  # retired already
            raise StepFailed(f"cannot retire {name}@{staged.version}: {exc.message}") from exc
    staged.record("refused_by_gates", failed=named)
    return named


def release_step(ctx: Context, staged: Staged, *, start: bool) -> str:
    """Serve a passed version: stable when the adapter has none, else a rollout (shadow
    first) with the spec's plan and SLO. Return what was done."""
    spec = ctx.loaded.spec
    name = spec.name
    ref = f"{name}@{staged.version}"
    try:
        stable = ctx.client.stable_version(name)
        if stable is None:
            ctx.client.call(
                "POST",
                f"/admin/adapters/{name}/versions/{staged.version}/stable",
                body={"reason": "first version, passed its gates"},
            )
            ensure_route_documents(ctx.client, ctx.loaded)
            staged.record("made_stable")
            return f"{ref} is the first version of {name}: it serves {name} now"
        if stable == staged.version:
            return f"{ref} serves {name} already"
        if not start:
            return f"{ref} is registered; no rollout started (--no-rollout)"
        changed = ensure_route_documents(ctx.client, ctx.loaded)
        if changed:
            ctx.console.print(f"route {name}: {' and '.join(changed)} updated from the spec")
        rollout = ctx.client.start_rollout(
            name, staged.version, spec.rollout.plan, reason=f"adapters pipeline: {ctx.loaded.file}"
        )
    except GatewayError as exc:
        raise StepFailed(f"the gateway refused the release of {ref}: {exc.message}") from exc
    staged.record("rollout_started", rollout=rollout["id"], stable=stable)
    return f"rollout {rollout['id']} started: {name}@{stable} → {ref}, in {rollout['stage']}"


def finished(staged: Staged) -> str | None:
    """Why there is nothing left to do for this version (None: there is)."""
    for event in reversed(staged.events()):
        kind = event.get("event")
        if kind == "rollout_started":
            return f"its rollout {event.get('rollout')} was started on {event['at']}"
        if kind in {"made_stable", "promoted", "rolled_back", "refused_by_gates"}:
            detail = f": {event['failed']}" if kind == "refused_by_gates" else ""
            return f"it was {kind.replace('_', ' ')} on {event['at']}{detail}"
    return None
