"""`lora-gateway reward`: train the built-in reward head and try it, here (no gateway needed).

The head is trained on the embeddings of the router's own model, found the way the gateway
finds it (`GATEWAY_ROUTING__MODEL_PATH`, `GATEWAY_ROUTING__TOKENIZER_PATH`, else the model
prepared in `GATEWAY_CACHE_DIR`): a head only loads beside the embedder it was trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gateway.cli.client import AsJson, console, err_console, fail
from gateway.cli.settings import load_settings
from gateway.quality.reward import (
    EmbeddingReward,
    PreferencePair,
    RewardError,
    demo_data_dir,
    demo_pairs,
    demo_routes,
    embedder_id,
    read_pairs,
    train_reward,
)

if TYPE_CHECKING:
    from gateway.routing.embedder import Embedder, Vectors

DEMO = "demo"

reward_app = typer.Typer(no_args_is_help=True, help="Train and try the built-in reward head.")


class _Remembering:
    """The embedder, each text embedded once over all the heads one command trains."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.embedder_id = embedder_id(inner)
        self._rows: dict[str, Vectors] = {}

    def embed(self, texts: list[str]) -> Vectors:
        missing = [text for text in dict.fromkeys(texts) if text not in self._rows]
        if missing:
            self._rows.update(zip(missing, self.inner.embed(missing), strict=True))
        return np.stack([self._rows[text] for text in texts])


def _embedder() -> Embedder:
    """The router's embedder, from the gateway's settings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gateway.routing.embedder import ModelMissing, load_embedder

    settings = load_settings()
    routing = settings.routing
    try:
        return load_embedder(
            settings.cache_dir,
            model=routing.model_path,
            tokenizer=routing.tokenizer_path,
            threads=routing.threads,
            max_tokens=routing.max_tokens,
        )
    except (ModelMissing, OSError, RuntimeError) as exc:  # RuntimeError: onnxruntime's
        fail(f"the embedding model could not be loaded: {exc}")


def _jobs(
    source: str, out: Path, routes: list[str], seed: int
) -> list[tuple[str, list[PreferencePair], Path]]:
    """(head name, its pairs, its directory) for each head to train."""
    try:
        if source != DEMO:
            if routes:
                fail("--route is for `demo` only: a pairs file trains one head")
            return [(Path(source).name, read_pairs(Path(source)), out)]
        directory = demo_data_dir()
        known = demo_routes(directory)
        unknown = sorted(set(routes) - set(known))
        if unknown:
            fail(f"no demo route {', '.join(unknown)} (demo routes: {', '.join(known)})")
        return [
            (route, demo_pairs(directory, route, seed=seed), out / route)
            for route in routes or known
        ]
    except (OSError, ValueError) as exc:
        fail(f"cannot read the preference pairs: {exc}")


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary(heads: list[tuple[str, EmbeddingReward, Path]]) -> Table:
    table = Table("head", "pairs", "held out", "held-out accuracy", "train s", "version")
    for name, head, _ in heads:
        report = head.report
        accuracy = _accuracy(report.heldout_accuracy)
        for source, value in report.heldout_by_source.items():
            accuracy += f"\n{escape(source or '(no source)')}: {value:.3f}"
        table.add_row(
            escape(name),
            str(report.pairs),
            str(report.heldout_pairs),
            accuracy,
            f"{report.train_seconds:.2f}",
            head.version,
        )
    return table


@reward_app.command()
def train(
    pairs: Annotated[
        str,
        typer.Argument(help='Preference pairs, JSONL {"prompt", "chosen", "rejected"}; or `demo`.'),
    ],
    out: Annotated[
        Path, typer.Option(help="The head's directory (`demo`: one directory per route in it).")
    ],
    seed: Annotated[int, typer.Option(help="Seed of the held-out split and the demo pairs.")] = 0,
    heldout: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of prompt groups held out.")
    ] = 0.2,
    route: Annotated[
        list[str] | None, typer.Option(help="`demo`: train only this route's head (repeatable).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Train reward heads from preference pairs (Bradley-Terry over the router's
    embeddings), measure each on held-out prompts and save it."""
    jobs = _jobs(pairs, out, route or [], seed)
    embedder = _Remembering(_embedder())
    heads: list[tuple[str, EmbeddingReward, Path]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err_console, transient=True) as progress:
        for name, some, directory in jobs:
            task = progress.add_task(f"embedding {escape(name)}", total=None)

            def advance(done: int, total: int, task: TaskID = task) -> None:
                progress.update(task, completed=done, total=total)

            try:
                head, _ = train_reward(
                    some, embedder, seed=seed, heldout_share=heldout, progress=advance
                )
                head.save(directory)
            except (ValueError, OSError, RewardError) as exc:
                fail(f"{name}: {exc}")
            progress.remove_task(task)
            heads.append((name, head, directory))
    if as_json:
        payload = [{"head": n, "directory": str(d), **h.info()} for n, h, d in heads]
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(_summary(heads), highlight=False)
    for name, _, directory in heads:
        console.print(f"{escape(name)}: saved in {escape(str(directory))}", highlight=False)


@reward_app.command()
def score(
    directory: Annotated[Path, typer.Argument(help="A head's directory (from `reward train`).")],
    prompt: Annotated[str, typer.Option(help="The prompt.")],
    answer: Annotated[str, typer.Option(help="The answer to score.")],
    as_json: AsJson = False,
) -> None:
    """Score one answer with a trained head (higher is better; a log-odds scale)."""
    try:
        head = EmbeddingReward.load(directory, _embedder())
    except RewardError as exc:
        fail(str(exc))
    value = head.score(prompt, answer)
    if as_json:
        typer.echo(json.dumps({"score": value, "head": head.name, "directory": str(directory)}))
        return
    console.print(f"{value:.4f}  ({escape(head.name)}, {escape(str(directory))})", highlight=False)
