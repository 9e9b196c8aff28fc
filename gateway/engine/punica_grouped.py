"""vLLM's CPU punica wrapper with grouped LoRA ops (`gateway.engine.lora_grouped`).

vLLM's LoRA layers call five wrapper methods: `add_lora_linear` (column-parallel and
merged q/k/v, gate/up layers), `add_shrink` + `add_expand` (row-parallel layers),
`add_lora_embedding` and `add_lora_logits` (lm_head). Each is replaced by one opaque
custom op (`torch.ops.lora_gateway.*`) that reads the step's slot indices from the
wrapper's own index buffers. Keeping all data-dependent work (which rows, which slots,
which packed weights) inside the ops is what lets vLLM compile the model with LoRA on:
the traced graph only sees one call per layer.

Packed weights and the step's token groups are cached per process, keyed on the tensors'
identity and version counters, so they are rebuilt exactly when vLLM loads an adapter
into a slot or starts a new step.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from gateway.engine.lora_grouped import (
    ExpandPack,
    PackedLora,
    ShrinkPack,
    TokenGroups,
    add_rows,
    pack_expand,
    pack_lora,
    pack_shrink,
    version_key,
)

QUALNAME = f"{__name__}.GroupedPunicaWrapperCPU"
# Adapter math runs in fp32: as exact as vLLM's fp32 shrink buffer, and on CPUs without
# native bf16 matrix units fp32 products are several times faster than bf16 ones.
COMPUTE_DTYPE = torch.float32

# Entries keep a weak reference to the tensor they were built from: an address alone could
# be reused by a new tensor whose version counter happens to match.
_packs: dict[tuple[str, int], tuple[object, weakref.ref[torch.Tensor], object]] = {}
# One entry per index buffer: only the current step's groups are kept (a step's batch size
# is part of the key, so keeping one entry per size would pile up masks for every size seen).
_groups: dict[int, tuple[tuple[int, int, int], weakref.ref[torch.Tensor], TokenGroups]] = {}


def _cached_pack(kind: str, tensors: Sequence[torch.Tensor], build: Any) -> Any:
    """The packed form of `tensors`, rebuilt only after one of them was written."""
    key = version_key(tensors)
    slot = (kind, tensors[0].data_ptr())
    hit = _packs.get(slot)
    if hit is not None and hit[0] == key and hit[1]() is tensors[0]:
        return hit[2]
    packed = build()
    _packs[slot] = (key, weakref.ref(tensors[0]), packed)
    return packed


def token_groups(indices: torch.Tensor, num_rows: int, num_slots: int) -> TokenGroups:
    """The groups of the first `num_rows` indices of a wrapper buffer, cached per step."""
    slot = indices.data_ptr()
    key = (indices._version, num_slots, num_rows)
    hit = _groups.get(slot)
    if hit is not None and hit[0] == key and hit[1]() is indices:
        return hit[2]
    groups = TokenGroups.from_indices(indices[:num_rows], num_slots)
    _groups[slot] = (key, weakref.ref(indices), groups)
    return groups


def clear_caches() -> None:
    """Forget every packed weight and token group (tests; not needed in serving)."""
    _packs.clear()
    _groups.clear()


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    indices: torch.Tensor,
    scale: float,
    offset: int,
    add_inputs: bool,
) -> None:
    """`y[:, offset:] += scale * x @ A[slot].T @ B[slot].T` per row, all slices at once."""
    packed: PackedLora | None = _cached_pack(
        f"linear{scale}",
        [*lora_a, *lora_b],
        lambda: pack_lora(lora_a, lora_b, scale, COMPUTE_DTYPE),
    )
    groups = token_groups(indices, x.shape[0], lora_a[0].shape[0])
    if packed is None or not packed.touches(groups):
        if not add_inputs:
            y[:, offset : offset + sum(b.shape[-2] for b in lora_b)].zero_()
        return
    packed.add_into(y, x, groups, offset, add_inputs)


def lora_shrink(
    buffer: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    indices: torch.Tensor,
    scale: float,
) -> None:
    """`buffer[i] = scale * x @ A_i[slot].T` per row, `buffer` being `(slices, rows, rank)`."""
    packed: ShrinkPack | None = _cached_pack(
        "shrink", lora_a, lambda: pack_shrink(lora_a, COMPUTE_DTYPE)
    )
    groups = token_groups(indices, x.shape[0], lora_a[0].shape[0])
    if packed is None or not packed.touches(groups):
        buffer.zero_()
        return
    packed.shrink_into(buffer, x, groups, scale)


def lora_expand(
    y: torch.Tensor,
    buffer: torch.Tensor,
    lora_b: list[torch.Tensor],
    indices: torch.Tensor,
    offset: int,
    add_inputs: bool,
) -> None:
    """`y[:, offset + slice i] += buffer[i] @ B_i[slot].T` per row."""
    packed: ExpandPack | None = _cached_pack(
        "expand", lora_b, lambda: pack_expand(lora_b, COMPUTE_DTYPE)
    )
    groups = token_groups(indices, buffer.shape[1], lora_b[0].shape[0])
    if packed is None or not packed.touches(groups):
        if not add_inputs:
            y[:, offset : offset + sum(b.shape[-2] for b in lora_b)].zero_()
        return
    add_rows(y, packed.expand_buffer(buffer, groups), groups, offset, add_inputs)


# A plain library with CPU kernels: `torch.library.custom_op` would add ~25 us of Python
# (autograd and view bookkeeping) to each of the ~120 calls per step.
SCHEMAS = {
    "lora_linear": (
        "lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor indices, "
        "float scale, int offset, bool add_inputs) -> ()"
    ),
    "lora_shrink": (
        "lora_shrink(Tensor(a!) buffer, Tensor x, Tensor[] lora_a, Tensor indices, float scale)"
        " -> ()"
    ),
    "lora_expand": (
        "lora_expand(Tensor(a!) y, Tensor buffer, Tensor[] lora_b, Tensor indices, int offset, "
        "bool add_inputs) -> ()"
    ),
}
KERNELS = {"lora_linear": lora_linear, "lora_shrink": lora_shrink, "lora_expand": lora_expand}


def _no_output(*args: object) -> None:
    """The ops' meta form for tracing: they only write into an argument."""
    return None


def _register_ops() -> torch.library.Library:
    library = torch.library.Library("lora_gateway", "DEF")
    for name, schema in SCHEMAS.items():
        library.define(schema)
        library.impl(name, KERNELS[name], "CPU")
        torch.library.register_fake(f"lora_gateway::{name}", _no_output, lib=library)
    return library


_LIBRARY = _register_ops()


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):  # type: ignore[misc]
    """vLLM's CPU wrapper (metadata unchanged) whose LoRA arithmetic runs grouped by slot."""

    def add_shrink(
        self,
        y: tuple[torch.Tensor, ...] | torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        scale: float,
        **kwargs: Any,
    ) -> None:
        x = x.view(-1, x.shape[-1])
        if isinstance(y, torch.Tensor):
            torch.ops.lora_gateway.lora_shrink(
                y, x, list(lora_a_stacked), self._token_lora_indices, scale
            )
            return
        for buffer, lora_a in zip(y, lora_a_stacked, strict=True):
            torch.ops.lora_gateway.lora_shrink(
                buffer.unsqueeze(0), x, [lora_a], self._token_lora_indices, scale
            )

    def add_expand(
        self,
        y: torch.Tensor,
        x: tuple[torch.Tensor, ...] | torch.Tensor,
        lora_b_stacked: tuple[torch.Tensor, ...],
        output_slices: tuple[int, ...],
        offset_start: int = 0,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        buffer = x if isinstance(x, torch.Tensor) else torch.stack(x)
        torch.ops.lora_gateway.lora_expand(
            y.view(-1, y.shape[-1]),
            buffer,
            list(lora_b_stacked),
            self._token_lora_indices,
            offset_start,
            add_inputs,
        )

    def add_lora_embedding(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        torch.ops.lora_gateway.lora_expand(
            y, x.unsqueeze(0), [lora_b_stacked], self._token_lora_indices, 0, add_inputs
        )

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        torch.ops.lora_gateway.lora_linear(
            y,
            x,
            list(lora_a_stacked),
            list(lora_b_stacked),
            self._token_lora_indices,
            scale,
            0,
            bool(kwargs.get("add_inputs", True)),
        )

    def add_lora_logits(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        scale: float,
        *,
        buffer: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        torch.ops.lora_gateway.lora_linear(
            y.view(-1, y.shape[-1]),
            x.view(-1, x.shape[-1]),
            [lora_a_stacked],
            [lora_b_stacked],
            self._sampler_indices,
            scale,
            0,
            True,
        )
