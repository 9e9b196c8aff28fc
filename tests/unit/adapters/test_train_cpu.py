"""bf16 autocast is used for training only where the CPU computes bf16 natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.train import native_bf16


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse avx2 avx512f avx512_bf16", True),
        ("fpu sse avx2 amx_bf16 amx_tile", True),
        ("fpu sse avx2 avx512f avx512bw", False),
        ("fpu sse avx2", False),
    ],
)
def test_native_bf16_reads_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert native_bf16(cpuinfo) is native


def test_native_bf16_is_false_without_cpuinfo(tmp_path: Path) -> None:
    assert native_bf16(tmp_path / "missing") is False
