"""The row attention under bf16 autocast is as accurate as torch's fused attention: its
scores and softmax stay float32 (rounded to bf16 before the softmax, its mean error was
3.5 times the fused kernel's, and the JSON example lost 0.09 of held-out exact match)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.row_attention import row_attention  # noqa: E402

HEADS, KV_HEADS, DIM = 9, 3, 64
ROWS = (90, 37, 61)


def _inputs() -> tuple[object, object, object, object]:
    generator = torch.Generator().manual_seed(0)
    tokens = sum(ROWS)

    def draw(heads: int, spread: float) -> object:
        values = torch.randn(1, heads, tokens, DIM, generator=generator) * spread
        return values.to(torch.bfloat16)

    positions = torch.cat([torch.arange(n) for n in ROWS])[None]
    return draw(HEADS, 2.0), draw(KV_HEADS, 2.0), draw(KV_HEADS, 1.0), positions


def _per_row(attend: object, query: object, key: object, value: object) -> object:
    """`attend(q, k, v)` on each row alone, as (1, tokens, heads, dim)."""
    outs, start = [], 0
    for n in ROWS:
        part = slice(start, start + n)
        outs.append(attend(query[:, :, part], key[:, :, part], value[:, :, part]))  # type: ignore[index, operator]
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2)


def _fused(query: object, key: object, value: object) -> object:
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, is_causal=True, enable_gqa=True
    )


def test_row_attention_in_bf16_is_as_accurate_as_the_fused_kernel() -> None:
    query, key, value, positions = _inputs()
    groups = HEADS // KV_HEADS

    def exact(q: object, k: object, v: object) -> object:
        wide_k = k.double().repeat_interleave(groups, dim=1)  # type: ignore[attr-defined]
        wide_v = v.double().repeat_interleave(groups, dim=1)  # type: ignore[attr-defined]
        return torch.nn.functional.scaled_dot_product_attention(
            q.double(),
            wide_k,
            wide_v,
            is_causal=True,  # type: ignore[attr-defined]
        )

    reference = _per_row(exact, query, key, value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = row_attention(
            None, query, key, value, None, scaling=DIM**-0.5, position_ids=positions
        )
        fused = _per_row(_fused, query, key, value)
    ours_error = (ours.double() - reference).abs().mean()
    fused_error = (fused.double() - reference).abs().mean()  # type: ignore[attr-defined]
    assert ours.dtype == torch.bfloat16
    assert ours_error <= 1.25 * fused_error, (float(ours_error), float(fused_error))
