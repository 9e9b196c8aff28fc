"""Command line for the adapter pipeline: `python -m adapters ...`.

`run SPEC` trains, evaluates, registers and rolls out in one go; `train`, `evaluate` and
`register` are its steps one at a time; `hooks serve` closes the loop when the gateway
promotes or rolls back a version. Exit status: 0 done, 1 a step failed (a gate, the gateway
refused), 2 the spec or a dataset is wrong.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adapters.client import DEFAULT_URL, GatewayClient
from adapters.demo import ensure_demo_adapters, stale_demo_adapters
from adapters.hooks_cli import hooks_app
from adapters.options import AdapterRoot, AdminKey, BaseDir, SpecArg, Url
from adapters.spec import LoadedSpec, SpecError, load_spec
from adapters.steps import (
    Context,
    Staged,
    StepFailed,
    evaluate_step,
    finished,
    refuse,
    release_step,
    stage_step,
    train_step,
)
from adapters.train import read_manifest

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(hooks_app, name="hooks")
console = Console()
err = Console(stderr=True)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Train, evaluate and register LoRA adapters."""
    # SIGTERM (a stopped container, a killed job) unwinds like Ctrl-C: a run in progress
    # removes its temporary directory on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _load(spec: Path) -> LoadedSpec:
    try:
        return load_spec(spec)
    except SpecError as exc:
        _spec_problems(exc)


def _spec_problems(exc: SpecError) -> NoReturn:
    for problem in exc.problems:
        err.print(f"[red]error:[/red] {escape(problem)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _context(
    spec: Path, url: str, admin_key: str | None, adapter_root: Path | None, base_dir: Path | None
) -> Context:
    from gateway.config import Settings
    from gateway.engine.basemodel import model_dir

    loaded = _load(spec)
    settings = Settings()
    if base_dir is None and loaded.spec.base_model.path is not None:
        base_dir = loaded.path(loaded.spec.base_model.path)
    base_dir = base_dir or model_dir(settings.cache_dir, "bf16")
    if not (base_dir / "config.json").is_file():
        err.print(
            f"[red]error:[/red] no base model at {base_dir}: run `lora-gateway prepare` "
            "or give base_model.path / --base-dir",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    return Context(
        loaded=loaded,
        base_dir=base_dir,
        adapter_root=adapter_root or settings.resolved_adapter_root,
        client=GatewayClient(url, admin_key),
        console=console,
    )


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


@contextmanager
def _reported() -> Iterator[None]:
    """A wrong spec or dataset exits 2, a failed step 1, each with what to tell the user."""
    try:
        yield
    except SpecError as exc:
        _spec_problems(exc)
    except StepFailed as exc:
        _fail(str(exc))


def _staged(ctx: Context) -> Staged:
    """Train (unless this run exists) and register the run unserved."""
    run_dir, data = train_step(ctx)
    return stage_step(ctx, run_dir, data)


@app.command()
def check(spec: SpecArg) -> None:
    """Check a spec and every dataset it names (every problem, with its file and line)."""
    from adapters.pipeline import prepare_data

    loaded = _load(spec)
    try:
        data = prepare_data(loaded)
    except SpecError as exc:
        _spec_problems(exc)
    config = loaded.spec.train_config(len(data.training))
    console.print(
        f"{loaded.file}: ok ({len(data.training)} training rows, {len(data.held_out)} held "
        f"out, {config.steps} steps)"
    )


@app.command()
def train(spec: SpecArg, base_dir: BaseDir = None) -> None:
    """Train the spec's adapter (nothing happens when this exact run exists)."""
    ctx = _context(spec, DEFAULT_URL, None, None, base_dir)
    with _reported():
        train_step(ctx)


@app.command()
def evaluate(
    spec: SpecArg,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    adapter_root: AdapterRoot = None,
    base_dir: BaseDir = None,
) -> None:
    """Register the trained run unserved and evaluate it against the base and stable
    versions through the gateway; exit 1 naming every failed gate."""
    ctx = _context(spec, url, admin_key, adapter_root, base_dir)
    with _reported():
        report, gates = evaluate_step(ctx, _staged(ctx))
    if not report["passed"]:
        _fail("gates failed: " + "; ".join(g.name for g in gates if not g.passed))


@app.command()
def register(
    spec: SpecArg,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    adapter_root: AdapterRoot = None,
    base_dir: BaseDir = None,
    rollout: Annotated[
        bool, typer.Option("--rollout/--no-rollout", help="Start the spec's rollout.")
    ] = True,
    ignore_gates: Annotated[
        bool, typer.Option("--ignore-gates", help="Release even without a passed evaluation.")
    ] = False,
) -> None:
    """Register the trained run and release it: stable when it is the adapter's first
    version, else a rollout (shadow first) with the spec's plan and SLO."""
    ctx = _context(spec, url, admin_key, adapter_root, base_dir)
    with _reported():
        staged = _staged(ctx)
        if not ignore_gates and not staged.passed():
            _fail(f"{ctx.loaded.spec.name}@{staged.version} has no passed evaluation: run evaluate")
        done = finished(staged)
        if done is not None and not ignore_gates:
            console.print(f"nothing to do: {ctx.loaded.spec.name}@{staged.version}: {done}")
            return
        console.print(release_step(ctx, staged, start=rollout and ctx.loaded.spec.rollout.start))


@app.command()
def run(
    spec: SpecArg,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    adapter_root: AdapterRoot = None,
    base_dir: BaseDir = None,
    rollout: Annotated[
        bool, typer.Option("--rollout/--no-rollout", help="Start the spec's rollout.")
    ] = True,
) -> None:
    """Train → evaluate → register → roll out. An unchanged spec does nothing the second time."""
    ctx = _context(spec, url, admin_key, adapter_root, base_dir)
    name = ctx.loaded.spec.name
    with _reported():
        staged = _staged(ctx)
        done = finished(staged)
        if done is not None:
            console.print(f"nothing to do: {name}@{staged.version}: {done}")
            if any(e["event"] == "refused_by_gates" for e in staged.events()):
                raise typer.Exit(1)
            return
        report, gates = evaluate_step(ctx, staged)
        if not report["passed"]:
            failed = refuse(ctx, staged, gates)
            _fail(f"{name}@{staged.version} refused by gates (retired): {failed}")
        console.print(release_step(ctx, staged, start=rollout and ctx.loaded.spec.rollout.start))


@app.command()
def lineage(spec: SpecArg) -> None:
    """Every run of the spec with its lineage: version, events, outcome."""
    loaded = _load(spec)
    table = Table(title=f"runs of {loaded.spec.name} in {loaded.output}")
    for column in ("run", "created", "version", "events", "outcome"):
        table.add_column(column)
    runs = sorted(loaded.output.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    from adapters.pipeline import lineage_of

    for manifest_file in runs:
        run_dir = manifest_file.parent
        manifest = read_manifest(run_dir) or {}
        record = lineage_of(run_dir).read()
        events = ", ".join(e["event"] for e in record.get("events", []))
        outcome = record.get("outcome", {}).get("event", "")
        table.add_row(
            run_dir.name,
            str(manifest.get("created_at", "")),
            str(record.get("version", "")),
            events,
            outcome,
        )
    console.print(table)


@app.command("train-demo")
def train_demo(
    base_dir: Annotated[
        Path, typer.Option(help="Hugging Face directory of the base model.", exists=True)
    ],
    adapter_root: Annotated[Path, typer.Option(help="Adapters go to ROOT/<name>/v1/.")],
) -> None:
    """Train the pirate, french, shout and cowboy demo adapters that are missing or stale."""
    stale = set(stale_demo_adapters(base_dir, adapter_root))
    paths = ensure_demo_adapters(base_dir, adapter_root)

    table = Table(title=f"demo adapters in {adapter_root}")
    for column in ("adapter", "status", "steps", "final loss", "seconds"):
        table.add_column(column, justify="left" if column in {"adapter", "status"} else "right")
    table.add_column("path", overflow="fold")
    for name, path in paths.items():
        manifest = read_manifest(path) or {}
        table.add_row(
            name,
            "trained" if name in stale else "cached",
            str(manifest.get("steps", "?")),
            f"{manifest.get('final_loss', float('nan')):.4f}",
            f"{manifest.get('train_seconds', float('nan')):.1f}",
            str(path),
        )
    Console().print(table)


def main() -> None:
    """Entry point for `python -m adapters`."""
    app()
