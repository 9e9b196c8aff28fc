"""Grouped multi-LoRA arithmetic for the CPU: one matrix product per step for every adapter.

vLLM keeps the weights of every LoRA slot stacked per layer, A as `(slots, 1, rank, in)`
and B as `(slots, 1, out, rank)`, one pair per output slice (q/k/v or gate/up of a merged
layer), and marks each token with its slot (-1: the base model). Its CPU ops gather a whole
weight matrix per token. Here the weights of all slots and slices are packed once into

- `lora_a_t`: `(in, columns)`, the A rows of every (slot, slice, rank) with non-zero weights,
  stored transposed (a product with a contiguous right-hand side is ~35% faster here);
- one B block per output slice, `(slots * rank, width)`, the scaling folded in;
- `column_slots`: the slot each shrunk column belongs to.

Then `hidden = mask(x @ lora_a_t)`, where the mask keeps each token's own slot's columns,
and each slice's output gets `hidden[:, slice's columns] @ block`: one product for A and
one per slice for B, whatever the number of adapters in the batch. Only tokens with an
adapter take part (`TokenGroups.rows`); a layer none of whose present adapters has weights
for it does no work; rank padding (`--max-lora-rank` above the adapters' rank) is cut off.
The packing is cached until vLLM writes new weights into the stacked tensors (every
in-place write bumps a tensor's version counter).

This module knows nothing about vLLM: `gateway.engine.punica_grouped` wires it in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenGroups:
    """Which rows of a batch use an adapter, and which slots occur (one step's metadata)."""

    # Slot of each row taking part; rows without an adapter are left out.
    slots_of_rows: torch.Tensor
    # Positions of those rows in the batch; None when every row uses an adapter.
    rows: torch.Tensor | None
    # Slots present in the batch.
    slots: frozenset[int]
    # Per packed column layout: which shrunk columns each row must not keep (built once a step).
    _foreign: dict[tuple[int, ...], torch.Tensor] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_indices(cls, indices: torch.Tensor, num_slots: int) -> TokenGroups:
        """Group one slot index per row; a negative index (or one past the slots) is no adapter."""
        active = (indices >= 0) & (indices < num_slots)
        if bool(active.all()):
            return cls(indices, None, frozenset(indices.unique().tolist()))
        rows = active.nonzero().squeeze(1)
        slots_of_rows = indices.index_select(0, rows)
        return cls(slots_of_rows, rows, frozenset(slots_of_rows.unique().tolist()))

    @property
    def empty(self) -> bool:
        return not self.slots

    def foreign_columns(self, column_slots: torch.Tensor, layout: tuple[int, ...]) -> torch.Tensor:
        """`(rows, columns)`: True where a column belongs to another slot than the row's.

        Layers with the same packed slots and rank share one mask per step.
        """
        mask = self._foreign.get(layout)
        if mask is None:
            mask = self.slots_of_rows.unsqueeze(1) != column_slots.unsqueeze(0)
            self._foreign[layout] = mask
        return mask


@dataclass(frozen=True)
class ShrinkPack:
    """The A weights of every packed slot and slice, `(in, slices * slots * rank)`, slice-major."""

    lora_a_t: torch.Tensor
    column_slots: torch.Tensor  # the slot of each shrunk column
    slots: frozenset[int]
    rank: int
    num_slices: int
    # The column layout (slots, rank, slices) as a key for per-step masks.
    layout: tuple[int, ...] = ()

    def touches(self, groups: TokenGroups) -> bool:
        """Whether any adapter present in the batch has weights here."""
        return not self.slots.isdisjoint(groups.slots)

    def shrink(self, x: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
        """`x @ A.T` for the rows taking part, with other slots' columns zeroed."""
        if groups.rows is not None:
            x = x.index_select(0, groups.rows)
        hidden = x.to(self.lora_a_t.dtype) @ self.lora_a_t
        foreign = groups.foreign_columns(self.column_slots, self.layout)
        # masked_fill, not a product with the mask: inf * 0 would leak NaN into other rows.
        return hidden.masked_fill_(foreign, 0.0)

    def shrink_into(
        self, buffer: torch.Tensor, x: torch.Tensor, groups: TokenGroups, scale: float
    ) -> None:
        """Write `scale * x @ A[slot].T` per slice into `buffer` `(slices, tokens, rank)`.

        Rows without an adapter (or whose adapter has no weights here) get zeros.
        """
        hidden = self.shrink(x, groups)
        rows = hidden.shape[0]
        # Each row keeps one slot's columns: summing over slots selects them.
        own = hidden.view(rows, self.num_slices, -1, self.rank).sum(dim=2).mul_(scale)
        own = own.transpose(0, 1).to(buffer.dtype)
        if groups.rows is None:
            buffer.zero_()[:, :, : self.rank].copy_(own)
            return
        buffer.zero_()
        buffer[:, :, : self.rank].index_copy_(1, groups.rows, own)


@dataclass(frozen=True)
class SliceBlock:
    """The B weights of one output slice for every packed slot: `(slots * rank, width)`."""

    lora_b: torch.Tensor
    first_column: int  # its columns in the shrunk activations
    offset: int  # its columns in the layer's output

    @property
    def width(self) -> int:
        return int(self.lora_b.shape[1])


@dataclass(frozen=True)
class ExpandPack:
    """The B weights of every packed slot, one block per output slice."""

    blocks: tuple[SliceBlock, ...]
    slot_order: torch.Tensor  # the packed slots, in column order
    slots: frozenset[int]
    rank: int
    # False when some B weight is inf or NaN: then each slot's rows are expanded apart.
    finite: bool = True

    @property
    def out_width(self) -> int:
        return sum(block.width for block in self.blocks)

    def touches(self, groups: TokenGroups) -> bool:
        """Whether any adapter present in the batch has weights here."""
        return not self.slots.isdisjoint(groups.slots)

    def expand(self, hidden: torch.Tensor, slots_of_rows: torch.Tensor) -> torch.Tensor:
        """Masked shrunk activations to the output columns, one product per slice."""
        if not self.finite:
            return self._expand_per_slot(hidden, slots_of_rows)
        delta = hidden.new_empty(hidden.shape[0], self.out_width)
        columns = self.blocks[0].lora_b.shape[0]
        for block in self.blocks:
            torch.mm(
                hidden[:, block.first_column : block.first_column + columns],
                block.lora_b,
                out=delta[:, block.offset : block.offset + block.width],
            )
        return delta

    def _expand_per_slot(self, hidden: torch.Tensor, slots_of_rows: torch.Tensor) -> torch.Tensor:
        """The same product, each slot's rows with that slot's block only.

        For adapters with inf/NaN in B: in one product over all slots, the other slots'
        zero columns would meet them as 0 * inf = NaN in every row.
        """
        delta = hidden.new_zeros(hidden.shape[0], self.out_width)
        for position, slot in enumerate(self.slot_order.tolist()):
            rows = (slots_of_rows == slot).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            first = position * self.rank
            for block in self.blocks:
                start = block.first_column + first
                part = hidden[rows, start : start + self.rank]
                own = block.lora_b[first : first + self.rank]
                delta[rows, block.offset : block.offset + block.width] = part @ own
        return delta

    def expand_buffer(self, buffer: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
        """`buffer[i] @ B_i[slot].T` per slice, rows taking part; `buffer` is (slices, rows, r)."""
        if groups.rows is not None:
            buffer = buffer.index_select(1, groups.rows)
        own = groups.slots_of_rows.unsqueeze(1) == self.slot_order.unsqueeze(0)
        dtype = self.blocks[0].lora_b.dtype
        # (rows, slices, 1, rank) spread over (rows, slices, slots, rank), zero but the own slot.
        per_slot = buffer[:, :, : self.rank].transpose(0, 1).unsqueeze(2).to(dtype)
        hidden = per_slot * own.to(dtype)[:, None, :, None]
        return self.expand(hidden.reshape(hidden.shape[0], -1), groups.slots_of_rows)


@dataclass(frozen=True)
class PackedLora:
    """Both halves of one layer's adapters, with the same slots and rank: `x @ A.T @ B.T`."""

    shrink: ShrinkPack
    expand: ExpandPack

    def touches(self, groups: TokenGroups) -> bool:
        return self.shrink.touches(groups)

    def delta_rows(self, x: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
        """The adapter output of the rows taking part, `(rows, out)` in the compute dtype."""
        return self.expand.expand(self.shrink.shrink(x, groups), groups.slots_of_rows)

    def add_into(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        groups: TokenGroups,
        offset: int,
        add_inputs: bool = True,
    ) -> None:
        """`y[:, offset:] += x @ A.T @ B.T` per row taking part (see `add_rows`)."""
        hidden = self.shrink.shrink(x, groups)
        if groups.rows is not None or not add_inputs or not self.expand.finite:
            delta = self.expand.expand(hidden, groups.slots_of_rows)
            add_rows(y, delta, groups, offset, add_inputs)
            return
        # Every row takes part: add each slice's product straight into its output columns.
        columns = self.expand.blocks[0].lora_b.shape[0]
        for block in self.expand.blocks:
            start = offset + block.offset
            width = min(block.width, y.shape[1] - start)
            if width <= 0:
                continue
            part = hidden[:, block.first_column : block.first_column + columns] @ block.lora_b
            y[:, start : start + width].add_(part[:, :width])


def _flat(stacked: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`(slots, 1, rows, columns)` (or without the 1) as `(slots, rows, columns)`."""
    return [t.reshape(t.shape[0], t.shape[-2], t.shape[-1]) for t in stacked]


def _live_slots(stacked: Sequence[torch.Tensor]) -> list[int]:
    """Slots with any non-zero weight in any slice."""
    return [s for s in range(stacked[0].shape[0]) if any(bool(t[s].any()) for t in stacked)]


def _rank_used(flat: Sequence[torch.Tensor], slots: Sequence[int], rank_dim: int) -> torch.Tensor:
    """Which rank positions are non-zero in any packed slot and slice."""
    other = 2 if rank_dim == 1 else 1
    used = torch.zeros(flat[0].shape[rank_dim], dtype=torch.bool, device=flat[0].device)
    for t in flat:
        used |= t[slots].ne(0).any(dim=other).any(dim=0)
    return used


def _rank(used: torch.Tensor) -> int:
    """The rank without trailing zero padding."""
    return int(used.nonzero().max()) + 1 if bool(used.any()) else 1


def _pack_shrink(
    a_flat: Sequence[torch.Tensor], slots: Sequence[int], rank: int, dtype: torch.dtype
) -> ShrinkPack:
    rows = [a[s, :rank] for a in a_flat for s in slots]
    column_slots = torch.tensor(list(slots), dtype=torch.long, device=a_flat[0].device)
    return ShrinkPack(
        lora_a_t=torch.cat(rows).to(dtype).T.contiguous(),
        column_slots=column_slots.repeat_interleave(rank).repeat(len(a_flat)),
        slots=frozenset(slots),
        rank=rank,
        num_slices=len(a_flat),
        layout=(*slots, -1, rank, len(a_flat)),
    )


def _pack_expand(
    b_flat: Sequence[torch.Tensor],
    slots: Sequence[int],
    rank: int,
    scale: float,
    dtype: torch.dtype,
) -> ExpandPack:
    blocks: list[SliceBlock] = []
    offset = 0
    for b in b_flat:
        # Row (slot, r) of the block is column r of that slot's B.
        block = torch.cat([b[s, :, :rank].T for s in slots]).to(dtype)
        if scale != 1.0:
            block = block * scale
        blocks.append(SliceBlock(block.contiguous(), len(blocks) * len(slots) * rank, offset))
        offset += b.shape[1]
    return ExpandPack(
        finite=all(bool(block.lora_b.isfinite().all()) for block in blocks),
        blocks=tuple(blocks),
        slot_order=torch.tensor(list(slots), dtype=torch.long, device=b_flat[0].device),
        slots=frozenset(slots),
        rank=rank,
    )


def pack_lora(
    lora_a: Sequence[torch.Tensor],
    lora_b: Sequence[torch.Tensor],
    scale: float,
    compute_dtype: torch.dtype,
) -> PackedLora | None:
    """Pack stacked per-slice weights; None when no slot has weights for this layer.

    `lora_a[i]` is `(slots, 1, rank, in)` and `lora_b[i]` `(slots, 1, width_i, rank)`; the
    output columns of slice i follow those of slice i-1. `scale` multiplies B.
    """
    a_flat, b_flat = _flat(lora_a), _flat(lora_b)
    live_b = set(_live_slots(b_flat))
    slots = [s for s in _live_slots(a_flat) if s in live_b]
    if not slots:
        return None
    # Rank rows zero in A, or columns zero in B, for every packed slot are padding.
    rank = _rank(_rank_used(a_flat, slots, 1) & _rank_used(b_flat, slots, 2))
    return PackedLora(
        _pack_shrink(a_flat, slots, rank, compute_dtype),
        _pack_expand(b_flat, slots, rank, scale, compute_dtype),
    )


def pack_shrink(lora_a: Sequence[torch.Tensor], compute_dtype: torch.dtype) -> ShrinkPack | None:
    """Pack the A half alone (a shrink whose expand comes separately); None if all zero."""
    a_flat = _flat(lora_a)
    slots = _live_slots(a_flat)
    if not slots:
        return None
    return _pack_shrink(a_flat, slots, _rank(_rank_used(a_flat, slots, 1)), compute_dtype)


def pack_expand(lora_b: Sequence[torch.Tensor], compute_dtype: torch.dtype) -> ExpandPack | None:
    """Pack the B half alone (an expand of activations shrunk elsewhere); None if all zero."""
    b_flat = _flat(lora_b)
    slots = _live_slots(b_flat)
    if not slots:
        return None
    return _pack_expand(b_flat, slots, _rank(_rank_used(b_flat, slots, 2)), 1.0, compute_dtype)


def version_key(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Identity and write count of each tensor: changes whenever one is written in place."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def add_rows(
    y: torch.Tensor,
    delta: torch.Tensor,
    groups: TokenGroups,
    offset: int,
    add_inputs: bool = True,
) -> None:
    """Add (or write) `delta` into columns `[offset, offset + width)` of the rows taking part.

    With `add_inputs=False` the rows without an adapter get zeros in those columns.
    """
    width = min(delta.shape[1], y.shape[1] - offset)
    target = y[:, offset : offset + width]
    delta = delta[:, :width].to(y.dtype)
    if groups.rows is None:
        if add_inputs:
            target.add_(delta)
        else:
            target.copy_(delta)
        return
    if not add_inputs:
        target.zero_()
    target.index_add_(0, groups.rows, delta)
