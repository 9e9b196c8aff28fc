"""LoRA punica ops for vLLM's CPU backend that keep base-model tokens free of adapter deltas.

Drop-in replacements for `vllm.lora.ops.torch_ops.lora_ops` (vLLM 0.32), same
signatures and the same arithmetic. vLLM marks a token (or a sequence, for the
`sgmv_*` ops) that uses no adapter with the LoRA index -1, and its ops index the
stacked adapter weights with it directly: `weights[-1]` is the last adapter slot, so
a base request batched with adapter requests receives that slot's delta whenever the
slot is occupied. Here a negative index means "no adapter":

- shrink writes zeros into that token's row of the output buffer;
- expand with `add_inputs` leaves that row's values as they are (it adds exact zeros);
- expand without `add_inputs` writes zeros into that row.

Speed is deliberately unchanged (one gathered weight matrix per token): these are what
`LORA_GATEWAY_LORA_OPS=vllm` runs. By default a generative model never calls them: the
grouped wrapper (`gateway.engine.punica_grouped`) replaces the punica methods above them.
"""

from __future__ import annotations

import torch


def _gather_and_apply(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Per-row `inputs[i] @ weights[idx[i]].T`, with rows of negative index set to zero."""
    active = lora_indices_tensor >= 0
    # Any valid slot will do for inactive rows: their result is discarded below.
    selected = weights[lora_indices_tensor.clamp(min=0)].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=dtype), selected)
    # masked_fill, not a multiply by the mask: a non-finite product must not leak as NaN.
    return outputs.masked_fill(~active.unsqueeze(-1), 0.0)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """Write `scaling * x @ A[idx].T` per token; tokens without an adapter get zeros."""
    outputs = _gather_and_apply(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """Add (or write) `x @ B[idx].T` per token; tokens without an adapter get no delta."""
    outputs = _gather_and_apply(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)

    # vLLM broadcasts a single computed row over every output row; kept as is.
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1

    # The adapter and the model may pad the output dimension differently.
    common_len = min(outputs.shape[1], output_tensor.shape[1])

    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """Like `bgmv_expand`, into the columns `[slice_offset, slice_offset + slice_size)`."""
    outputs = _gather_and_apply(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    """`bgmv_shrink` with one LoRA index per sequence (run of tokens)."""
    token_indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, token_indices, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    """`bgmv_expand` with one LoRA index per sequence (run of tokens)."""
    token_indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, token_indices, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    """`bgmv_expand_slice` with one LoRA index per sequence (run of tokens)."""
    token_indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(
        inputs,
        lora_b_weights,
        output_tensor,
        token_indices,
        slice_offset,
        slice_size,
        add_inputs,
    )
