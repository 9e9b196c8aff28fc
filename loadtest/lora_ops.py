"""Per-layer cost of the CPU LoRA ops: vLLM's punica wrapper (with the isolation fix) vs the
grouped one, for one SmolLM2-135M decoder layer's four LoRA projections.

    .venv/bin/python -m loadtest.lora_ops --tokens 32 --tokens 512
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from gateway.engine import punica_grouped, vllm_plugin

# Projection -> (input width, output slices): q|k|v, o, gate|up, down.
LAYER = {
    "qkv_proj": (576, (576, 192, 192)),
    "o_proj": (576, (576,)),
    "gate_up_proj": (576, (1536, 1536)),
    "down_proj": (1536, (576,)),
}
SLOTS = 4
MAX_RANK = 16
RANK = 8
# Slot patterns, repeated over the batch (-1: the base model).
PATTERNS = {
    "base only": (-1,),
    "mix with base": (-1, 0, 1, 2, 3),
    "all slots": (0, 1, 2, 3),
}

app = typer.Typer(add_completion=False, help=__doc__)
console = Console() if sys.stdout.isatty() else Console(width=120)

Stack = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]


def _stack(in_width: int, widths: tuple[int, ...], dtype: torch.dtype) -> Stack:
    """Rank-8 adapters in every slot, zero-padded to rank 16 as vLLM stacks them."""
    lora_a, lora_b = [], []
    for width in widths:
        a = torch.zeros(SLOTS, 1, MAX_RANK, in_width)
        b = torch.zeros(SLOTS, 1, width, MAX_RANK)
        a[:, :, :RANK] = torch.randn(SLOTS, 1, RANK, in_width) * 0.05
        b[:, :, :, :RANK] = torch.randn(SLOTS, 1, width, RANK) * 0.05
        lora_a.append(a.to(dtype))
        lora_b.append(b.to(dtype))
    return tuple(lora_a), tuple(lora_b)


def _wrapper(cls: type, indices: torch.Tensor) -> object:
    """A punica wrapper with one step's metadata, as vLLM's CPU runner sets it (prefill)."""
    wrapper = cls(4096, 4096, "cpu")
    tokens = indices.shape[0]
    wrapper._token_lora_indices[:tokens].copy_(indices)
    wrapper.indices_len = [tokens] * 4
    wrapper._update_prefill_metadata(wrapper.token_lora_indices)
    wrapper.is_prefill = True
    return wrapper


def _time_us(run: Callable[[], None], seconds: float) -> float:
    for _ in range(3):
        run()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        calls += 1
    return (time.perf_counter() - started) / calls * 1e6


def measure(
    tokens: int, pattern: tuple[int, ...], dtype: torch.dtype, seconds: float
) -> dict[str, float]:
    """Microseconds per layer (four projections) for each wrapper."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    indices = torch.tensor([pattern[i % len(pattern)] for i in range(tokens)])
    stacks = {name: _stack(i, w, dtype) for name, (i, w) in LAYER.items()}
    xs = {name: torch.randn(tokens, i).to(dtype) for name, (i, _) in LAYER.items()}
    ys = {name: torch.zeros(tokens, sum(w), dtype=dtype) for name, (_, w) in LAYER.items()}
    results = {}
    for label, cls in (
        ("vllm", PunicaWrapperCPU),
        ("grouped", punica_grouped.GroupedPunicaWrapperCPU),
    ):
        wrapper = _wrapper(cls, indices)

        def layer(wrapper: object = wrapper) -> None:
            for name, (_, widths) in LAYER.items():
                lora_a, lora_b = stacks[name]
                wrapper.add_lora_linear(ys[name], xs[name], lora_a, lora_b, 1.0, widths)  # type: ignore[attr-defined]

        results[label] = _time_us(layer, seconds)
    return results


@app.command()
def main(
    tokens: Annotated[list[int], typer.Option(help="Batch sizes in tokens")] = [32, 512],  # noqa: B006
    seconds: Annotated[float, typer.Option(min=0.1, help="Time per measurement")] = 2.0,
    threads: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Print microseconds per decoder layer with vLLM's ops and the grouped ops."""
    torch.set_num_threads(threads)
    vllm_plugin.install_lora_fix()
    table = Table(title=f"us per decoder layer (4 LoRA projections), {threads} thread(s)")
    for column in ("tokens", "slots", "dtype", "vLLM ops", "grouped", "speed-up"):
        table.add_column(column, justify="right")
    for count in tokens:
        for name, pattern in PATTERNS.items():
            for dtype in (torch.bfloat16, torch.float32):
                got = measure(count, pattern, dtype, seconds)
                table.add_row(
                    str(count),
                    name,
                    str(dtype).removeprefix("torch."),
                    f"{got['vllm']:,.0f}",
                    f"{got['grouped']:,.0f}",
                    f"{got['vllm'] / got['grouped']:.1f}x",
                )
    console.print(table)


if __name__ == "__main__":
    app()
