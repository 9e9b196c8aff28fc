"""Attention for a training step whose rows lie end to end on one line: each row attends,
causally, to itself only (its positions restart at 0).

Putting a step's rows on one line leaves no padding for the linear layers, which do most
of the work: 13 to 25% of a padded step of the example tasks was padding. Attention is
computed per row with plain matmuls and a softmax, in float32, rather than with torch's
fused CPU kernel, whose backward pass, on rows this short (40 to 130 tokens), cost a fifth
of a bf16 step by itself. Registered with transformers as `ATTENTION` and used on the CPU; any
device can compute the same with `sdpa`, from which transformers builds the same mask.
"""

from __future__ import annotations

from typing import Any

ATTENTION = "lora_gateway_rows"


def row_starts(position_ids: Any) -> list[int]:
    """Where each row of one line starts: the positions that restart at 0."""
    starts: list[int] = (position_ids == 0).nonzero().flatten().tolist()
    return starts


def row_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention interface: (batch, heads, tokens, dim) in, (batch, tokens,
    heads, dim) out; rows found from `position_ids` (one row a line without them)."""
    import torch

    if dropout:
        raise ValueError("row attention does not apply dropout")
    lines, _, tokens, dim = query.shape
    groups = query.shape[1] // key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    spans = []
    for line in range(lines):
        starts = row_starts(position_ids[line]) if position_ids is not None else [0]
        spans += [(line, a, b) for a, b in zip(starts, [*starts[1:], tokens], strict=True)]
    longest = max(end - start for _, start, end in spans)
    causal = torch.ones(longest, longest, dtype=torch.bool, device=query.device).tril()
    out = torch.empty_like(query)
    # In float32 whatever the autocast: scores rounded to bf16 before the softmax lose what
    # torch's fused kernels keep (they accumulate and normalise in float32 too).
    with torch.autocast(query.device.type, enabled=False):
        for line, start, end in spans:
            q = query[line, :, start:end].float()
            k = key[line, :, start:end].float().repeat_interleave(groups, dim=0)
            v = value[line, :, start:end].float().repeat_interleave(groups, dim=0)
            scores = (q @ k.transpose(-1, -2)) * scale
            scores = scores.masked_fill(~causal[: end - start, : end - start], float("-inf"))
            out[line, :, start:end] = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the row attention available to transformers' models; its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, row_attention)
    return ATTENTION
