"""Which embedded checkpoint generates faster on this CPU: the base model answering the JSON
example's held-out prompts through the gateway, as the pipeline's evaluation asks them.

For each `--checkpoint` a gateway (and its managed engine) starts on free ports over an empty
adapter root; the base model answers the 120 held-out prompts of `adapters/examples/
json_extract` (greedy, `--max-tokens` each) with each `--concurrency` requests in flight. Prints
seconds and rows/s per (checkpoint, concurrency) and the ratio to the first checkpoint; `--json
FILE` writes them with the machine. What `GATEWAY_ENGINE__CHECKPOINT=auto` picks rests on it.

    .venv/bin/python -m loadtest.checkpoints --json checkpoints.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.client import GatewayClient
from adapters.data import read_dataset
from adapters.evaluate import answer_all
from adapters.local_gateway import REPO, LocalGateway
from gateway.config import Settings
from loadtest.common import finish, machine_line, run_guarded

PROMPTS = REPO / "adapters" / "examples" / "json_extract" / "data" / "test.jsonl"
console = Console()
app = typer.Typer(add_completion=False, help=__doc__)


def measure(checkpoint: str, concurrencies: list[int], max_tokens: int) -> list[dict[str, Any]]:
    """Seconds for every prompt at each concurrency, on a gateway serving `checkpoint`."""
    rows = read_dataset(PROMPTS).rows
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="checkpoints-") as tmp,
        LocalGateway(Path(tmp), GATEWAY_ENGINE__CHECKPOINT=checkpoint) as gateway,
        GatewayClient(gateway.url) as client,
    ):
        base = client.base_model()
        # A first batch compiles and warms the engine's shapes.
        answer_all(client, [(base, rows[:8])], max_tokens)
        for concurrency in concurrencies:
            started = time.perf_counter()
            answer_all(client, [(base, rows)], max_tokens, concurrency=concurrency)
            seconds = time.perf_counter() - started
            results.append(
                {
                    "checkpoint": checkpoint,
                    "concurrency": concurrency,
                    "rows": len(rows),
                    "seconds": round(seconds, 1),
                    "rows_per_s": round(len(rows) / seconds, 2),
                }
            )
            console.print(results[-1])
    return results


@app.command()
def main(
    checkpoint: Annotated[list[str], typer.Option(help="Embedded checkpoints to compare.")] = [  # noqa: B006
        "w8a8",
        "float32",
    ],
    concurrency: Annotated[list[int], typer.Option(help="Requests in flight.")] = [16, 32],  # noqa: B006
    max_tokens: int = 64,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers here.")] = None,
) -> None:
    """Compare the checkpoints' generation speed through the gateway."""
    console.print(machine_line())
    console.print(f"auto picks here: {Settings().resolved_checkpoint}")

    def run() -> list[dict[str, Any]]:
        return [row for name in checkpoint for row in measure(name, concurrency, max_tokens)]

    results, load_before, load_after = run_guarded(run)
    first = {r["concurrency"]: r["seconds"] for r in results if r["checkpoint"] == checkpoint[0]}
    table = Table("checkpoint", "in flight", "seconds", "rows/s", f"time ÷ {checkpoint[0]}")
    for r in results:
        ratio = r["seconds"] / first[r["concurrency"]]
        table.add_row(
            r["checkpoint"],
            str(r["concurrency"]),
            f"{r['seconds']:.1f}",
            f"{r['rows_per_s']:.2f}",
            f"{ratio:.2f}",
        )
    console.print(table)
    finish(
        console,
        json_out,
        load_before,
        load_after,
        auto=Settings().resolved_checkpoint,
        results=results,
    )


if __name__ == "__main__":
    app()
