"""What this CPU computes natively, read once from /proc/cpuinfo (Linux flag names), and the
embedded checkpoint that serves fastest on it.

Measured through the gateway on a 2-core AMD EPYC with AVX2 only (no VNNI), the JSON
example's 120 held-out prompts answered by the base model, 64 tokens each, 32 in flight: the
int8 W8A8 checkpoint took 115 s, the same model in float32 75 s (`loadtest.checkpoints`).
Without int8 dot-product instructions vLLM's int8 products are slower than float32 ones; with
them (VNNI, AMX) int8 is the faster and smaller base (docs/benchmarks.md).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

# Instructions that multiply-add int8 in one step.
INT8_DOT_FLAGS: Final = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's flags (empty when they cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def auto_checkpoint(flags: frozenset[str]) -> str:
    """The embedded checkpoint `auto` stands for on a CPU with these flags: int8 W8A8 where
    the CPU has int8 dot products, the float original served in float32 elsewhere."""
    return "w8a8" if flags & INT8_DOT_FLAGS else "float32"


def served_checkpoint(choice: str) -> str:
    """The checkpoint a setting names, with "auto" picked for this CPU."""
    return auto_checkpoint(cpu_flags()) if choice == "auto" else choice


def stored_checkpoint(checkpoint: str) -> str:
    """The prepared directory a served checkpoint comes from: float32 from the bf16 one."""
    return "bf16" if checkpoint == "float32" else checkpoint


def served_dtype(checkpoint: str) -> str | None:
    """vLLM's `--dtype` for a served checkpoint (None: the checkpoint's own)."""
    return "float32" if checkpoint == "float32" else None
