"""The grouped multi-LoRA ops (`lora_grouped`, `punica_grouped`) against a float64 reference.

Shapes follow SmolLM2-135M (hidden 576; q|k|v 576|192|192, gate|up 1536|1536, down 1536 -> 576,
vocab 49152) with 4 LoRA slots of max rank 16 holding rank-8 adapters zero-padded to 16, as
`--max-lora-rank 16` loads them. Slot -1 is the base model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from gateway.engine import lora_grouped as lg
from gateway.engine import punica_grouped, vllm_plugin
from gateway.engine.punica_grouped import GroupedPunicaWrapperCPU

HIDDEN = 576
INTERMEDIATE = 1536
VOCAB = 49152
SLOTS = 4
MAX_RANK = 16
RANK = 8
MAX_TOKENS = 64
# Layer kind -> (input width, output slice widths).
LAYERS = {
    "qkv_proj": (HIDDEN, (HIDDEN, 192, 192)),
    "o_proj": (HIDDEN, (HIDDEN,)),
    "gate_up_proj": (HIDDEN, (INTERMEDIATE, INTERMEDIATE)),
    "down_proj": (INTERMEDIATE, (HIDDEN,)),
}
COMBOS = {
    "base_only": (-1,) * 6,
    "one_adapter": (2,) * 6,
    "one_adapter_with_base": (-1, 2, 2, -1, 2, -1),
    "all_slots": (0, 1, 2, 3) * 2,
    "mixed_with_base": (-1, 0, 1, 2, 3) * 2,
}
MIXED = COMBOS["mixed_with_base"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Relative error ||got - ref|| / ||ref|| of the adapter delta.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
PATHS = ["linear", "shrink_expand"]


@dataclass(frozen=True)
class Stack:
    """One layer's stacked weights in vLLM's layout, one tensor per output slice."""

    lora_a: tuple[torch.Tensor, ...]  # (SLOTS, 1, MAX_RANK, in)
    lora_b: tuple[torch.Tensor, ...]  # (SLOTS, 1, width, MAX_RANK)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(b.shape[2] for b in self.lora_b)


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    punica_grouped.clear_caches()
    yield
    punica_grouped.clear_caches()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(4321)


@pytest.fixture
def lora_fix() -> Iterator[None]:
    """vLLM's ops with the isolation fix (negative index = no adapter), as the plugin runs them."""
    was_installed = vllm_plugin.lora_fix_installed()
    vllm_plugin.install_lora_fix()
    assert vllm_plugin.lora_fix_installed()
    yield
    if not was_installed:
        vllm_plugin.uninstall_lora_fix()


def _make_stack(
    gen: torch.Generator,
    in_width: int,
    widths: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    ranks: tuple[int, ...] = (RANK,) * SLOTS,
) -> Stack:
    """Adapters of the given rank per slot (0: no adapter), zero-padded to MAX_RANK."""
    lora_a, lora_b = [], []
    for width in widths:
        a = torch.zeros(SLOTS, 1, MAX_RANK, in_width)
        b = torch.zeros(SLOTS, 1, width, MAX_RANK)
        for slot, rank in enumerate(ranks):
            a[slot, 0, :rank] = torch.randn(rank, in_width, generator=gen) * 0.05
            b[slot, 0, :, :rank] = torch.randn(width, rank, generator=gen) * 0.05
        lora_a.append(a.to(dtype))
        lora_b.append(b.to(dtype))
    return Stack(tuple(lora_a), tuple(lora_b))


def _reference(x: torch.Tensor, stack: Stack, slots: tuple[int, ...], scale: float = 1.0):
    """The adapter delta of every row in float64: `scale * B[slot] @ A[slot] @ x` per slice."""
    rows = []
    for row, slot in enumerate(slots):
        if slot < 0:
            rows.append(torch.zeros(sum(stack.widths), dtype=torch.float64))
            continue
        x64 = x[row].double()
        parts = [
            b[slot, 0].double() @ (a[slot, 0].double() @ x64)
            for a, b in zip(stack.lora_a, stack.lora_b, strict=True)
        ]
        rows.append(scale * torch.cat(parts))
    return torch.stack(rows)


def _inputs(gen: torch.Generator, slots: tuple[int, ...], in_width: int, out_width: int, dtype):
    """(x, y0): y0 is random, but zero on adapter rows in bf16 so its rounding does not count."""
    x = torch.randn(len(slots), in_width, generator=gen).to(dtype)
    y0 = torch.randn(len(slots), out_width, generator=gen)
    if dtype != torch.float32:
        y0[[i for i, s in enumerate(slots) if s >= 0]] = 0.0
    return x, y0.to(dtype)


def _assert_delta(y, y0, ref, slots, dtype, no_delta: frozenset[int] = frozenset()) -> None:
    """Rows of base tokens (and of `no_delta` slots) bitwise unchanged; the others match `ref`."""
    untouched = [i for i, s in enumerate(slots) if s < 0 or s in no_delta]
    changed = [i for i, s in enumerate(slots) if s >= 0 and s not in no_delta]
    assert torch.equal(y[untouched], y0[untouched])
    if changed:
        got = y[changed].double() - y0[changed].double()
        want = ref[changed]
        error = float((got - want).norm() / want.norm())
        assert error < TOLERANCE[dtype], f"relative error {error:.2e}"


def _set_indices(wrapper, tokens: tuple[int, ...], requests: tuple[int, ...] | None = None) -> None:
    requests = tokens if requests is None else requests
    wrapper._token_lora_indices[: len(tokens)].copy_(torch.tensor(tokens))
    wrapper._sampler_indices[: len(requests)].copy_(torch.tensor(requests))
    wrapper.indices_len = [len(tokens), len(requests), len(requests), len(tokens)]


def _grouped(tokens: tuple[int, ...], requests: tuple[int, ...] | None = None, cls=None):
    """A wrapper (grouped, or vLLM's own as `cls`) set up for one step with these slots."""
    wrapper = (cls or GroupedPunicaWrapperCPU)(MAX_TOKENS, MAX_TOKENS, "cpu")
    _set_indices(wrapper, tokens, requests)
    # vLLM's CPU runner treats every batch as a prefill (the grouped ops ignore this).
    wrapper._update_prefill_metadata(wrapper.token_lora_indices)
    wrapper.is_prefill = True
    return wrapper


def _apply(path: str, wrapper, y, x, stack: Stack, scale: float = 1.0) -> None:
    """One layer's LoRA: column-parallel (`add_lora_linear`) or row-parallel (shrink, expand)."""
    if path == "linear":
        wrapper.add_lora_linear(y, x, stack.lora_a, stack.lora_b, scale, stack.widths)
        return
    buffer = torch.zeros(len(stack.lora_a), x.shape[0], MAX_RANK)
    wrapper.add_shrink(buffer, x, stack.lora_a, scale)
    wrapper.add_expand(y, buffer, stack.lora_b, stack.widths, offset_start=0, add_inputs=True)


# --- accuracy against float64, base rows untouched ---------------------------------------------


@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_lora_linear_matches_float64_reference_and_leaves_base_rows_untouched(
    gen: torch.Generator, layer: str, dtype: torch.dtype, combo: str
) -> None:
    slots = COMBOS[combo]
    stack = _make_stack(gen, *LAYERS[layer], dtype)
    x, y0 = _inputs(gen, slots, LAYERS[layer][0], sum(stack.widths), dtype)
    y = y0.clone()

    _grouped(slots).add_lora_linear(y, x, stack.lora_a, stack.lora_b, 1.0, stack.widths)

    _assert_delta(y, y0, _reference(x, stack, slots), slots, dtype)


def test_lora_linear_applies_the_scale_and_keeps_one_pack_per_scale(gen: torch.Generator) -> None:
    stack = _make_stack(gen, *LAYERS["qkv_proj"])
    x, y0 = _inputs(gen, MIXED, HIDDEN, sum(stack.widths), torch.float32)
    wrapper = _grouped(MIXED)

    for scale in (0.5, 2.0, 0.5):
        y = y0.clone()
        wrapper.add_lora_linear(y, x, stack.lora_a, stack.lora_b, scale, stack.widths)
        _assert_delta(y, y0, _reference(x, stack, MIXED, scale), MIXED, torch.float32)


@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("layer", ["o_proj", "down_proj", "qkv_proj"])
def test_shrink_then_expand_matches_reference_and_zeroes_base_rows_of_the_buffer(
    gen: torch.Generator, layer: str, dtype: torch.dtype, combo: str
) -> None:
    slots = COMBOS[combo]
    stack = _make_stack(gen, *LAYERS[layer], dtype)
    x, y0 = _inputs(gen, slots, LAYERS[layer][0], sum(stack.widths), dtype)
    y = y0.clone()
    # Garbage in the buffer: the shrink overwrites it.
    buffer = torch.full((len(stack.lora_a), len(slots), MAX_RANK), 7.0)
    wrapper = _grouped(slots)

    wrapper.add_shrink(buffer, x, stack.lora_a, 0.5)
    wrapper.add_expand(y, buffer, stack.lora_b, stack.widths, offset_start=0, add_inputs=True)

    base = [i for i, s in enumerate(slots) if s < 0]
    assert torch.equal(buffer[:, base], torch.zeros(len(stack.lora_a), len(base), MAX_RANK))
    for row, slot in enumerate(slots):
        if slot >= 0:
            want = torch.stack([0.5 * a[slot, 0].double() @ x[row].double() for a in stack.lora_a])
            torch.testing.assert_close(buffer[:, row].double(), want, rtol=1e-5, atol=1e-5)
    _assert_delta(y, y0, _reference(x, stack, slots, 0.5), slots, dtype)


def test_shrink_into_a_tuple_of_buffers_matches_the_stacked_buffer(gen: torch.Generator) -> None:
    stack = _make_stack(gen, *LAYERS["qkv_proj"])
    x = torch.randn(len(MIXED), HIDDEN, generator=gen)
    stacked = torch.full((3, len(MIXED), MAX_RANK), -3.0)
    per_slice = tuple(torch.full((len(MIXED), MAX_RANK), 5.0) for _ in range(3))
    wrapper = _grouped(MIXED)

    wrapper.add_shrink(stacked, x, stack.lora_a, 1.0)
    wrapper.add_shrink(per_slice, x, stack.lora_a, 1.0)

    # One product for all slices or one per slice: equal up to summation order.
    torch.testing.assert_close(torch.stack(per_slice), stacked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["linear", "expand"])
def test_without_add_inputs_base_rows_get_zeros_in_the_layers_columns_only(
    gen: torch.Generator, path: str
) -> None:
    stack = _make_stack(gen, *LAYERS["o_proj"])
    offset = 0 if path == "linear" else 64
    x, y0 = _inputs(gen, MIXED, HIDDEN, offset + HIDDEN + 32, torch.float32)
    y = y0.clone()
    wrapper = _grouped(MIXED)

    if path == "linear":
        wrapper.add_lora_linear(
            y, x, stack.lora_a, stack.lora_b, 1.0, stack.widths, add_inputs=False
        )
    else:
        buffer = torch.zeros(1, len(MIXED), MAX_RANK)
        wrapper.add_shrink(buffer, x, stack.lora_a, 1.0)
        wrapper.add_expand(y, buffer, stack.lora_b, stack.widths, offset, add_inputs=False)

    cols = slice(offset, offset + HIDDEN)
    assert torch.equal(y[:, :offset], y0[:, :offset])
    assert torch.equal(y[:, offset + HIDDEN :], y0[:, offset + HIDDEN :])
    zero = torch.zeros_like(y0)
    _assert_delta(y[:, cols], zero[:, cols], _reference(x, stack, MIXED), MIXED, torch.float32)


@pytest.mark.parametrize(
    ("dtype", "vocab"), [(torch.float32, VOCAB), (torch.bfloat16, 4096)], ids=["fp32", "bf16"]
)
def test_logits_follow_the_sampler_indices_and_match_reference(
    gen: torch.Generator, dtype: torch.dtype, vocab: int
) -> None:
    requests = (3, -1, 0, 2, -1, 1)
    stack = _make_stack(gen, HIDDEN, (vocab,), dtype)
    x, y0 = _inputs(gen, requests, HIDDEN, vocab, dtype)
    y = y0.clone()
    # Token indices that differ from the per-request ones: the logits must not read them.
    wrapper = _grouped((1,) * len(requests), requests)

    wrapper.add_lora_logits(y, x, stack.lora_a[0], stack.lora_b[0], 1.0)

    _assert_delta(y, y0, _reference(x, stack, requests), requests, dtype)


def test_logits_without_lm_head_adapters_skip_the_op_and_leave_logits_bitwise_unchanged(
    gen: torch.Generator,
) -> None:
    # No adapter targets lm_head: vLLM's stacks stay all zero (A random here: B alone decides).
    requests = (0, -1, 3, 1)
    lora_a = torch.randn(SLOTS, 1, MAX_RANK, HIDDEN, generator=gen) * 0.05
    lora_b = torch.zeros(SLOTS, 1, VOCAB, MAX_RANK)
    x, y0 = _inputs(gen, requests, HIDDEN, VOCAB, torch.float32)
    y = y0.clone()

    _grouped(requests).add_lora_logits(y, x, lora_a, lora_b, 1.0)

    assert torch.equal(y, y0)
    assert lg.pack_lora([lora_a], [lora_b], 1.0, torch.float32) is None
    assert [entry[-1] for entry in punica_grouped._packs.values()] == [None]


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_embedding_matches_reference_and_leaves_base_rows_untouched(
    gen: torch.Generator, dtype: torch.dtype
) -> None:
    stack = _make_stack(gen, HIDDEN, (HIDDEN,), dtype)
    lora_b = stack.lora_b[0]
    x, y0 = _inputs(gen, MIXED, MAX_RANK, HIDDEN, dtype)
    y = y0.clone()

    _grouped(MIXED).add_lora_embedding(y, x, lora_b)

    # An expand alone is a shrink by the identity.
    identity = torch.eye(MAX_RANK).expand(SLOTS, 1, MAX_RANK, MAX_RANK)
    _assert_delta(y, y0, _reference(x, Stack((identity,), (lora_b,)), MIXED), MIXED, dtype)


# --- packing: zero weights skipped, rank padding cut --------------------------------------------


def test_slot_without_weights_for_a_layer_is_not_packed_and_gets_no_delta(
    gen: torch.Generator,
) -> None:
    stack = _make_stack(gen, *LAYERS["gate_up_proj"])
    for a in stack.lora_a:
        a[1] = 0.0  # slot 1: adapter without gate/up weights
    stack.lora_b[1][3] = 0.0  # slot 3: zero B in one slice only, still live
    x, y0 = _inputs(gen, MIXED, HIDDEN, sum(stack.widths), torch.float32)
    y = y0.clone()

    pack = lg.pack_lora(stack.lora_a, stack.lora_b, 1.0, torch.float32)
    _grouped(MIXED).add_lora_linear(y, x, stack.lora_a, stack.lora_b, 1.0, stack.widths)

    assert pack is not None
    assert pack.shrink.slots == pack.expand.slots == frozenset({0, 2, 3})
    assert pack.shrink.lora_a_t.shape == (HIDDEN, 2 * 3 * RANK)
    _assert_delta(y, y0, _reference(x, stack, MIXED), MIXED, torch.float32, frozenset({1}))


def test_rank_padding_is_cut_to_the_largest_adapter_rank(gen: torch.Generator) -> None:
    stack = _make_stack(gen, *LAYERS["qkv_proj"])
    mixed_ranks = _make_stack(gen, HIDDEN, LAYERS["qkv_proj"][1], ranks=(4, 8, 2, 0))
    x, y0 = _inputs(gen, MIXED, HIDDEN, sum(stack.widths), torch.float32)
    y = y0.clone()

    pack = lg.pack_lora(stack.lora_a, stack.lora_b, 1.0, torch.float32)
    shrink = lg.pack_shrink(stack.lora_a, torch.float32)
    expand = lg.pack_expand(stack.lora_b, torch.float32)
    mixed_pack = lg.pack_lora(mixed_ranks.lora_a, mixed_ranks.lora_b, 1.0, torch.float32)
    _grouped(MIXED).add_lora_linear(
        y, x, mixed_ranks.lora_a, mixed_ranks.lora_b, 1.0, mixed_ranks.widths
    )

    assert pack is not None and shrink is not None and expand is not None
    assert pack.shrink.rank == pack.expand.rank == shrink.rank == expand.rank == RANK
    assert pack.shrink.lora_a_t.shape == (HIDDEN, 3 * SLOTS * RANK)
    assert mixed_pack is not None and mixed_pack.shrink.rank == 8
    assert mixed_pack.shrink.slots == frozenset({0, 1, 2})
    ref = _reference(x, mixed_ranks, MIXED)
    _assert_delta(y, y0, ref, MIXED, torch.float32, frozenset({3}))


@pytest.mark.parametrize("path", PATHS)
def test_all_zero_stacks_pack_to_none_and_change_nothing(gen: torch.Generator, path: str) -> None:
    stack = _make_stack(gen, HIDDEN, LAYERS["qkv_proj"][1], ranks=(0,) * SLOTS)
    x, y0 = _inputs(gen, MIXED, HIDDEN, sum(stack.widths), torch.float32)
    y = y0.clone()

    _apply(path, _grouped(MIXED), y, x, stack)

    assert lg.pack_lora(stack.lora_a, stack.lora_b, 1.0, torch.float32) is None
    assert lg.pack_shrink(stack.lora_a, torch.float32) is None
    assert lg.pack_expand(stack.lora_b, torch.float32) is None
    assert torch.equal(y, y0)


# --- caches follow in-place writes ---------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_weights_written_in_place_are_picked_up_by_the_next_call(
    gen: torch.Generator, path: str
) -> None:
    stack = _make_stack(gen, *LAYERS["qkv_proj"])
    fresh = _make_stack(gen, *LAYERS["qkv_proj"])
    x, y0 = _inputs(gen, MIXED, HIDDEN, sum(stack.widths), torch.float32)
    wrapper = _grouped(MIXED)
    _apply(path, wrapper, y0.clone(), x, stack)

    # set_lora: a new adapter copied into slot 2.
    for dst, src in zip(stack.lora_a + stack.lora_b, fresh.lora_a + fresh.lora_b, strict=True):
        dst[2].copy_(src[2])
    y = y0.clone()
    _apply(path, wrapper, y, x, stack)
    _assert_delta(y, y0, _reference(x, stack, MIXED), MIXED, torch.float32)

    # reset_lora: slot 0 zeroed.
    for t in stack.lora_a + stack.lora_b:
        t[0] = 0
    y = y0.clone()
    _apply(path, wrapper, y, x, stack)
    _assert_delta(y, y0, _reference(x, stack, MIXED), MIXED, torch.float32, frozenset({0}))


@pytest.mark.parametrize("path", PATHS)
def test_indices_changed_in_place_are_picked_up_by_the_next_call(
    gen: torch.Generator, path: str
) -> None:
    stack = _make_stack(gen, *LAYERS["o_proj"])
    x, y0 = _inputs(gen, MIXED, HIDDEN, HIDDEN, torch.float32)
    wrapper = _grouped(MIXED)
    _apply(path, wrapper, y0.clone(), x, stack)

    for slots in [(3, -1, -1, 0, 2) * 2, (-1,) * 10, (1,) * 10]:
        _set_indices(wrapper, slots)
        y = y0.clone()
        _apply(path, wrapper, y, x, stack)
        _assert_delta(y, y0, _reference(x, stack, slots), slots, torch.float32)


# --- non-finite values stay in their own rows ----------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("half", ["lora_a", "lora_b"])
@pytest.mark.parametrize("path", PATHS)
def test_non_finite_values_reach_no_other_rows(
    gen: torch.Generator, path: str, half: str, value: float
) -> None:
    stack = _make_stack(gen, *LAYERS["o_proj"])
    getattr(stack, half)[0][1, 0, 3, 5] = value  # slot 1, inside its rank
    x, y0 = _inputs(gen, MIXED, HIDDEN, HIDDEN, torch.float32)
    x[0] = value  # the activations of a base row
    y = y0.clone()

    _apply(path, _grouped(MIXED), y, x, stack)

    others = [i for i, s in enumerate(MIXED) if s != 1]
    assert y[others].isfinite().all(), (
        f"non-finite rows: {(~y.isfinite()).any(1).nonzero().flatten().tolist()}"
    )
    sub = tuple(s for s in MIXED if s != 1)
    _assert_delta(y[others], y0[others], _reference(x[others], stack, sub), sub, torch.float32)


# --- agreement with vLLM's own wrapper (with the isolation fix) --------------------------------


@pytest.mark.parametrize("kind", ["qkv_linear", "down_shrink_expand", "logits", "embedding"])
def test_agrees_with_vllms_cpu_wrapper_with_the_fix(
    lora_fix: None, gen: torch.Generator, kind: str
) -> None:
    requests = (2, -1, 0, 3, 1)
    tokens = requests if kind == "logits" else MIXED
    layer = {"qkv_linear": "qkv_proj", "down_shrink_expand": "down_proj"}.get(kind, "o_proj")
    stack = (
        _make_stack(gen, *LAYERS[layer]) if kind != "logits" else _make_stack(gen, HIDDEN, (VOCAB,))
    )
    in_width = MAX_RANK if kind == "embedding" else LAYERS[layer][0]
    x, y0 = _inputs(gen, tokens, in_width, sum(stack.widths), torch.float32)
    outs = []
    for wrapper in (_grouped(MIXED, requests), _grouped(MIXED, requests, PunicaWrapperCPU)):
        y = y0.clone()
        if kind == "qkv_linear":
            _apply("linear", wrapper, y, x, stack, 0.5)
        elif kind == "down_shrink_expand":
            _apply("shrink_expand", wrapper, y, x, stack, 0.5)
        elif kind == "logits":
            wrapper.add_lora_logits(y, x, stack.lora_a[0], stack.lora_b[0], 0.5)
        else:
            wrapper.add_lora_embedding(y, x, stack.lora_b[0])
        outs.append(y)

    assert not torch.equal(outs[0], y0)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


# --- the pure-torch building blocks ------------------------------------------------------------


def test_token_groups_keep_adapter_rows_and_treat_out_of_range_slots_as_base() -> None:
    every = lg.TokenGroups.from_indices(torch.tensor([2, 0, 2]), SLOTS)
    some = lg.TokenGroups.from_indices(torch.tensor([-1, 2, SLOTS, 0, -1]), SLOTS)
    none = lg.TokenGroups.from_indices(torch.tensor([-1, -1]), SLOTS)

    assert every.rows is None and every.slots == frozenset({0, 2}) and not every.empty
    assert some.rows is not None and some.rows.tolist() == [1, 3]
    assert some.slots_of_rows.tolist() == [2, 0] and some.slots == frozenset({0, 2})
    assert none.empty


@pytest.mark.parametrize("add_inputs", [True, False])
def test_add_rows_touches_only_adapter_rows_inside_its_columns(add_inputs: bool) -> None:
    groups = lg.TokenGroups.from_indices(torch.tensor([-1, 1, -1, 0]), SLOTS)
    y = torch.arange(4 * 10, dtype=torch.float32).view(4, 10)
    before = y.clone()
    delta = torch.full((2, 8), 100.0)  # wider than the 6 columns left after offset 4

    lg.add_rows(y, delta, groups, offset=4, add_inputs=add_inputs)

    assert torch.equal(y[:, :4], before[:, :4])
    assert torch.equal(y[[0, 2], 4:], before[[0, 2], 4:] if add_inputs else torch.zeros(2, 6))
    assert torch.equal(y[[1, 3], 4:], before[[1, 3], 4:] * add_inputs + 100.0)


def test_version_key_changes_on_in_place_writes_only() -> None:
    a, b = torch.zeros(4, 3), torch.zeros(2)
    key = lg.version_key([a, b])

    assert lg.version_key([a, b]) == key
    a[1] = 5.0
    assert lg.version_key([a, b]) != key
    assert lg.version_key([a.clone(), b]) != lg.version_key([a, b])


def test_packed_halves_agree_with_the_whole_pack(gen: torch.Generator) -> None:
    stack = _make_stack(gen, *LAYERS["gate_up_proj"])
    x = torch.randn(len(MIXED), HIDDEN, generator=gen)
    groups = lg.TokenGroups.from_indices(torch.tensor(MIXED), SLOTS)
    pack = lg.pack_lora(stack.lora_a, stack.lora_b, 1.0, torch.float32)
    shrink = lg.pack_shrink(stack.lora_a, torch.float32)
    expand = lg.pack_expand(stack.lora_b, torch.float32)
    assert pack is not None and shrink is not None and expand is not None
    buffer = torch.full((2, len(MIXED), MAX_RANK), 9.0)

    whole = pack.delta_rows(x, groups)
    shrink.shrink_into(buffer, x, groups, 1.0)
    halves = expand.expand_buffer(buffer, groups)

    active = [i for i, s in enumerate(MIXED) if s >= 0]
    ref = _reference(x, stack, MIXED)[active]
    torch.testing.assert_close(whole.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(halves.double(), ref, rtol=1e-5, atol=1e-6)


# --- torch.compile: the data-dependent work stays inside the custom ops ------------------------


def test_compiled_lora_linear_follows_new_indices_without_recompiling(gen: torch.Generator) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    stack = _make_stack(gen, *LAYERS["qkv_proj"])
    x, y0 = _inputs(gen, MIXED, HIDDEN, sum(stack.widths), torch.float32)
    wrapper = _grouped(MIXED)

    def layer(y, x, a0, a1, a2, b0, b1, b2):
        wrapper.add_lora_linear(y, x, (a0, a1, a2), (b0, b1, b2), 1.0, stack.widths)
        return y

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    # A new step: other slots in place, then fewer tokens.
    for slots in [MIXED, (3, 3, -1, 0, -1, 1, 1, 2, -1, 3), (2, -1, 1, 1, -1, 0, 3)]:
        _set_indices(wrapper, slots)
        n = len(slots)
        y = compiled(y0[:n].clone(), x[:n].clone(), *stack.lora_a, *stack.lora_b)
        _assert_delta(y, y0[:n], _reference(x[:n], stack, slots), slots, torch.float32)

    assert counter.frame_count == 1
    assert "lora_gateway.lora_linear" in counter.graphs[0].code
    torch._dynamo.reset()


def test_a_new_tensor_at_a_cached_address_is_packed_anew() -> None:
    """Same address and version counter (a view here; a reused allocation in general)."""
    first = torch.ones(2, 2)
    same_place = first.view(2, 2)
    assert same_place.data_ptr() == first.data_ptr()
    assert lg.version_key([same_place]) == lg.version_key([first])
    builds: list[str] = []

    punica_grouped._cached_pack("t", [first], lambda: builds.append("first") or "first")
    got = punica_grouped._cached_pack("t", [same_place], lambda: builds.append("view") or "view")

    assert got == "view"
    assert builds == ["first", "view"]


def test_only_the_current_steps_groups_are_kept_per_index_buffer() -> None:
    indices = torch.tensor([0, 1, -1, 2, 3, 0, 1, 2])
    for rows in range(1, indices.shape[0] + 1):
        groups = punica_grouped.token_groups(indices, rows, SLOTS)
        assert groups.slots == frozenset(s for s in indices[:rows].tolist() if s >= 0)

    assert len(punica_grouped._groups) == 1
