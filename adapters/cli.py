"""Command line for the adapter pipeline: `python -m adapters ...`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapters.demo import ensure_demo_adapters, stale_demo_adapters
from adapters.train import read_manifest

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    """Train, evaluate and register LoRA adapters."""
    # A callback keeps typer in sub-command mode even while only one command exists.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
