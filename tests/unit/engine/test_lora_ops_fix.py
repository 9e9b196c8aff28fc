"""The LoRA isolation fix: op semantics, vLLM's original bug, and where the plugin patches it.

Shapes follow SmolLM2-135M (hidden 576, 3 KV heads of 64) with rank 16 and 4 LoRA slots,
every slot holding an adapter, in fp32.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

from gateway.engine import lora_ops as fixed_ops
from gateway.engine import vllm_plugin

HIDDEN = 576
KV_WIDTH = 192
RANK = 16
SLOTS = 4
LAST_SLOT = SLOTS - 1
SCALE = 0.5
VOCAB = 49152

# Per-token LoRA slots as vLLM's punica wrapper passes them: -1 is the base model.
TOKEN_SLOTS = (0, -1, 1, 3, -1, 2, 3, -1, 0, -1)
# Per-sequence slots and lengths for the sgmv_* ops (runs of tokens).
SEQ_SLOTS = (-1, 0, 3, -1, 2, 1)
SEQ_LENS = (3, 5, 2, 4, 1, 2)

PATCH_SITES = [(m, n) for m in vllm_plugin.PATCH_MODULES for n in vllm_plugin.OP_NAMES]


@dataclass(frozen=True)
class LoraStack:
    """Stacked adapter weights in vLLM's layout: (slots, 1, out, in)."""

    lora_a: torch.Tensor  # (SLOTS, 1, RANK, HIDDEN)
    lora_b: torch.Tensor  # (SLOTS, 1, HIDDEN, RANK)
    lora_b_kv: torch.Tensor  # (SLOTS, 1, KV_WIDTH, RANK)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def stack(gen: torch.Generator) -> LoraStack:
    return LoraStack(
        lora_a=torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen) * 0.05,
        lora_b=torch.randn(SLOTS, 1, HIDDEN, RANK, generator=gen) * 0.05,
        lora_b_kv=torch.randn(SLOTS, 1, KV_WIDTH, RANK, generator=gen) * 0.05,
    )


@pytest.fixture
def pristine_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """vLLM's own ops module, with the fix out for the test and put back as it was after."""
    was_installed = vllm_plugin.lora_fix_installed()
    grouped_was_installed = vllm_plugin.grouped_ops_installed()
    vllm_plugin.uninstall_lora_fix()
    vllm_plugin.uninstall_grouped_ops()
    monkeypatch.setattr(vllm_plugin, "_disabled_warned", False)
    yield importlib.import_module(vllm_plugin.VLLM_OPS_MODULE)
    vllm_plugin.uninstall_lora_fix()
    vllm_plugin.uninstall_grouped_ops()
    if was_installed:
        vllm_plugin.install_lora_fix()
    if grouped_was_installed:
        vllm_plugin.install_grouped_ops(compile_lora=True)


def _slots(values: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _token_slots_of_sequences() -> tuple[int, ...]:
    return tuple(s for s, n in zip(SEQ_SLOTS, SEQ_LENS, strict=True) for _ in range(n))


def _sgmv_meta() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    """(seq starts, seq lens, seq slots, batches, max len, tokens) as vLLM's prefill metadata."""
    lens = _slots(SEQ_LENS)
    starts = torch.zeros_like(lens)
    starts[1:] = torch.cumsum(lens, 0)[:-1]
    return starts, lens, _slots(SEQ_SLOTS), len(SEQ_LENS), max(SEQ_LENS), sum(SEQ_LENS)


def _delta64(x: torch.Tensor, weights: torch.Tensor, slot: int, scale: float = 1.0) -> torch.Tensor:
    """One row's LoRA product in float64: `scale * weights[slot] @ x`."""
    return scale * (weights[slot, 0].double() @ x.double())


def _base_rows(slots: tuple[int, ...]) -> list[int]:
    return [i for i, s in enumerate(slots) if s < 0]


def _adapter_rows(slots: tuple[int, ...]) -> list[int]:
    return [i for i, s in enumerate(slots) if s >= 0]


# --- the fixed ops ------------------------------------------------------------------------


def test_shrink_writes_zero_rows_for_base_tokens_and_each_adapters_own_delta(
    stack: LoraStack, gen: torch.Generator
) -> None:
    x = torch.randn(len(TOKEN_SLOTS), HIDDEN, generator=gen)
    # Garbage in the buffer: shrink overwrites, so base rows must come out as exact zeros.
    y = torch.full((len(TOKEN_SLOTS), RANK), 7.0)

    fixed_ops.bgmv_shrink(x, stack.lora_a, y, _slots(TOKEN_SLOTS), SCALE)

    for row in _base_rows(TOKEN_SLOTS):
        assert torch.equal(y[row], torch.zeros(RANK))
    for row in _adapter_rows(TOKEN_SLOTS):
        expected = _delta64(x[row], stack.lora_a, TOKEN_SLOTS[row], SCALE)
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


def test_expand_with_add_inputs_leaves_base_rows_untouched(
    stack: LoraStack, gen: torch.Generator
) -> None:
    x = torch.randn(len(TOKEN_SLOTS), RANK, generator=gen)
    y = torch.randn(len(TOKEN_SLOTS), HIDDEN, generator=gen)
    before = y.clone()

    fixed_ops.bgmv_expand(x, stack.lora_b, y, _slots(TOKEN_SLOTS), add_inputs=True)

    for row in _base_rows(TOKEN_SLOTS):
        assert torch.equal(y[row], before[row])
    for row in _adapter_rows(TOKEN_SLOTS):
        expected = before[row].double() + _delta64(x[row], stack.lora_b, TOKEN_SLOTS[row])
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


def test_expand_without_add_inputs_writes_zero_rows_for_base_tokens(
    stack: LoraStack, gen: torch.Generator
) -> None:
    x = torch.randn(len(TOKEN_SLOTS), RANK, generator=gen)
    y = torch.randn(len(TOKEN_SLOTS), HIDDEN, generator=gen)

    fixed_ops.bgmv_expand(x, stack.lora_b, y, _slots(TOKEN_SLOTS), add_inputs=False)

    for row in _base_rows(TOKEN_SLOTS):
        assert torch.equal(y[row], torch.zeros(HIDDEN))
    for row in _adapter_rows(TOKEN_SLOTS):
        expected = _delta64(x[row], stack.lora_b, TOKEN_SLOTS[row])
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_changes_only_adapter_rows_inside_the_slice(
    stack: LoraStack, gen: torch.Generator, add_inputs: bool
) -> None:
    # A fused q|k|v output: the k slice is written.
    x = torch.randn(len(TOKEN_SLOTS), RANK, generator=gen)
    y = torch.randn(len(TOKEN_SLOTS), HIDDEN + 2 * KV_WIDTH, generator=gen)
    before = y.clone()
    lo, hi = HIDDEN, HIDDEN + KV_WIDTH

    fixed_ops.bgmv_expand_slice(
        x, stack.lora_b_kv, y, _slots(TOKEN_SLOTS), HIDDEN, KV_WIDTH, add_inputs
    )

    assert torch.equal(y[:, :lo], before[:, :lo])
    assert torch.equal(y[:, hi:], before[:, hi:])
    for row in _base_rows(TOKEN_SLOTS):
        expected_base = before[row, lo:hi] if add_inputs else torch.zeros(KV_WIDTH)
        assert torch.equal(y[row, lo:hi], expected_base)
    for row in _adapter_rows(TOKEN_SLOTS):
        expected = _delta64(x[row], stack.lora_b_kv, TOKEN_SLOTS[row])
        if add_inputs:
            expected = expected + before[row, lo:hi].double()
        torch.testing.assert_close(y[row, lo:hi].double(), expected, rtol=1e-5, atol=1e-5)


def test_base_only_batch_gets_no_lora_at_all(stack: LoraStack, gen: torch.Generator) -> None:
    slots = _slots((-1,) * 6)
    x = torch.randn(6, HIDDEN, generator=gen)
    buffer = torch.full((6, RANK), 3.0)
    y = torch.randn(6, HIDDEN, generator=gen)
    before = y.clone()

    fixed_ops.bgmv_shrink(x, stack.lora_a, buffer, slots, SCALE)
    fixed_ops.bgmv_expand(torch.randn(6, RANK, generator=gen), stack.lora_b, y, slots, True)

    assert torch.equal(buffer, torch.zeros(6, RANK))
    assert torch.equal(y, before)


def test_non_finite_inputs_of_base_rows_do_not_leak(stack: LoraStack) -> None:
    x = torch.ones(3, RANK)
    x[1] = float("nan")
    y = torch.zeros(3, HIDDEN)

    fixed_ops.bgmv_expand(x, stack.lora_b, y, _slots((0, -1, 2)), add_inputs=True)

    assert torch.equal(y[1], torch.zeros(HIDDEN))


@pytest.mark.parametrize("op", ["bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"])
def test_adapter_rows_are_bitwise_equal_to_vllm_ops(
    pristine_vllm: ModuleType, stack: LoraStack, gen: torch.Generator, op: str
) -> None:
    # The fix changes base rows only: adapter rows keep vLLM's exact arithmetic.
    slots = _slots(TOKEN_SLOTS)
    n = len(TOKEN_SLOTS)
    if op == "bgmv_shrink":
        x = torch.randn(n, HIDDEN, generator=gen)
        outs = [torch.zeros(n, RANK) for _ in range(2)]
        for impl, out in zip((fixed_ops, pristine_vllm), outs, strict=True):
            impl.bgmv_shrink(x, stack.lora_a, out, slots, SCALE)
    elif op == "bgmv_expand":
        x = torch.randn(n, RANK, generator=gen)
        y0 = torch.randn(n, HIDDEN, generator=gen)
        outs = [y0.clone() for _ in range(2)]
        for impl, out in zip((fixed_ops, pristine_vllm), outs, strict=True):
            impl.bgmv_expand(x, stack.lora_b, out, slots, True)
    else:
        x = torch.randn(n, RANK, generator=gen)
        y0 = torch.randn(n, HIDDEN + 2 * KV_WIDTH, generator=gen)
        outs = [y0.clone() for _ in range(2)]
        for impl, out in zip((fixed_ops, pristine_vllm), outs, strict=True):
            impl.bgmv_expand_slice(x, stack.lora_b_kv, out, slots, HIDDEN, KV_WIDTH, True)

    rows = _adapter_rows(TOKEN_SLOTS)
    assert torch.equal(outs[0][rows], outs[1][rows])


# --- the sgmv wrappers (one index per sequence) ----------------------------------------------


def test_sgmv_shrink_applies_each_sequences_index_to_its_tokens(
    stack: LoraStack, gen: torch.Generator
) -> None:
    token_slots = _token_slots_of_sequences()
    x = torch.randn(len(token_slots), HIDDEN, generator=gen)
    y = torch.full((len(token_slots), RANK), -2.0)

    fixed_ops.sgmv_shrink(x, stack.lora_a, y, *_sgmv_meta(), SCALE)

    for row in _base_rows(token_slots):
        assert torch.equal(y[row], torch.zeros(RANK))
    for row in _adapter_rows(token_slots):
        expected = _delta64(x[row], stack.lora_a, token_slots[row], SCALE)
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_sgmv_expand_applies_each_sequences_index_to_its_tokens(
    stack: LoraStack, gen: torch.Generator, add_inputs: bool
) -> None:
    token_slots = _token_slots_of_sequences()
    x = torch.randn(len(token_slots), RANK, generator=gen)
    y = torch.randn(len(token_slots), HIDDEN, generator=gen)
    before = y.clone()

    fixed_ops.sgmv_expand(x, stack.lora_b, y, *_sgmv_meta(), add_inputs)

    for row in _base_rows(token_slots):
        assert torch.equal(y[row], before[row] if add_inputs else torch.zeros(HIDDEN))
    for row in _adapter_rows(token_slots):
        expected = _delta64(x[row], stack.lora_b, token_slots[row])
        if add_inputs:
            expected = expected + before[row].double()
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


def test_sgmv_expand_slice_applies_each_sequences_index_to_its_tokens(
    stack: LoraStack, gen: torch.Generator
) -> None:
    token_slots = _token_slots_of_sequences()
    x = torch.randn(len(token_slots), RANK, generator=gen)
    y = torch.randn(len(token_slots), HIDDEN + 2 * KV_WIDTH, generator=gen)
    before = y.clone()
    lo, hi = HIDDEN + KV_WIDTH, HIDDEN + 2 * KV_WIDTH

    fixed_ops.sgmv_expand_slice(x, stack.lora_b_kv, y, *_sgmv_meta(), lo, KV_WIDTH, add_inputs=True)

    assert torch.equal(y[:, :lo], before[:, :lo])
    for row in _base_rows(token_slots):
        assert torch.equal(y[row], before[row])
    for row in _adapter_rows(token_slots):
        expected = before[row, lo:hi].double() + _delta64(x[row], stack.lora_b_kv, token_slots[row])
        torch.testing.assert_close(y[row, lo:hi].double(), expected, rtol=1e-5, atol=1e-5)


# --- vLLM's own ops: the bug the tests above would catch -------------------------------------


def test_vllm_shrink_gives_base_tokens_the_last_slots_delta(
    pristine_vllm: ModuleType, stack: LoraStack, gen: torch.Generator
) -> None:
    x = torch.randn(len(TOKEN_SLOTS), HIDDEN, generator=gen)
    y = torch.zeros(len(TOKEN_SLOTS), RANK)

    pristine_vllm.bgmv_shrink(x, stack.lora_a, y, _slots(TOKEN_SLOTS), SCALE)

    for row in _base_rows(TOKEN_SLOTS):
        assert y[row].abs().max() > 0.1
        expected = _delta64(x[row], stack.lora_a, LAST_SLOT, SCALE)
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


def test_vllm_expand_adds_the_last_slots_delta_to_base_rows(
    pristine_vllm: ModuleType, stack: LoraStack, gen: torch.Generator
) -> None:
    x = torch.randn(len(TOKEN_SLOTS), RANK, generator=gen)
    y = torch.randn(len(TOKEN_SLOTS), HIDDEN, generator=gen)
    before = y.clone()

    pristine_vllm.bgmv_expand(x, stack.lora_b, y, _slots(TOKEN_SLOTS), True)

    for row in _base_rows(TOKEN_SLOTS):
        assert not torch.equal(y[row], before[row])
        expected = before[row].double() + _delta64(x[row], stack.lora_b, LAST_SLOT)
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


def test_vllm_sgmv_shrink_gives_base_sequences_the_last_slots_delta(
    pristine_vllm: ModuleType, stack: LoraStack, gen: torch.Generator
) -> None:
    token_slots = _token_slots_of_sequences()
    x = torch.randn(len(token_slots), HIDDEN, generator=gen)
    y = torch.zeros(len(token_slots), RANK)

    pristine_vllm.sgmv_shrink(x, stack.lora_a, y, *_sgmv_meta(), SCALE)

    for row in _base_rows(token_slots):
        expected = _delta64(x[row], stack.lora_a, LAST_SLOT, SCALE)
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-5, atol=1e-5)


# --- the plugin: where the fixed ops are bound ------------------------------------------------


def _bound_to_fixed_ops(module_name: str, op_name: str) -> bool:
    module = importlib.import_module(module_name)
    return getattr(module, op_name) is getattr(fixed_ops, op_name)


def test_register_binds_fixed_ops_wherever_vllm_looks_them_up(
    pristine_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "1")
    assert not any(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)

    vllm_plugin.register()

    assert all(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)
    punica_cpu = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")
    assert punica_cpu.bgmv_shrink is fixed_ops.bgmv_shrink
    assert punica_cpu.sgmv_expand_slice is fixed_ops.sgmv_expand_slice


def test_register_is_on_by_default(
    pristine_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(vllm_plugin.LORA_FIX_ENV, raising=False)

    vllm_plugin.register()

    assert all(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)


def test_register_is_idempotent_and_logs_the_patch_once(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "1")

    vllm_plugin.register()
    vllm_plugin.register()
    vllm_plugin.register()

    infos = [r for r in plugin_log if r.levelno == logging.INFO and "LoRA fix" in r.getMessage()]
    assert len(infos) == 1
    message = infos[0].getMessage()
    ops = ",".join(vllm_plugin.OP_NAMES)
    for module_name in vllm_plugin.PATCH_MODULES:
        assert f"{module_name}.{{{ops}}}" in message
    assert not [r for r in plugin_log if r.levelno >= logging.WARNING]
    assert all(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)

    vllm_plugin.uninstall_lora_fix()
    assert not any(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)


def test_switch_off_keeps_vllm_ops_and_warns_once(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "0")
    originals = {(m, n): getattr(importlib.import_module(m), n) for m, n in PATCH_SITES}

    vllm_plugin.register()
    vllm_plugin.register()

    assert {(m, n): getattr(importlib.import_module(m), n) for m, n in PATCH_SITES} == originals
    warnings = [r for r in plugin_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "NOT isolated" in warnings[0].getMessage()


def test_unreadable_switch_keeps_the_fix_on(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "off")

    vllm_plugin.register()

    assert all(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)
    assert any(r.levelno == logging.WARNING for r in plugin_log)


def test_unexpected_vllm_version_leaves_vllm_untouched(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
) -> None:
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "1")

    vllm_plugin.register()

    assert not any(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)
    assert any("0.33.1" in r.getMessage() for r in plugin_log if r.levelno == logging.WARNING)


def test_foreign_binding_leaves_vllm_untouched(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
) -> None:
    punica_cpu = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")

    def someone_elses_shrink(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(punica_cpu, "bgmv_shrink", someone_elses_shrink)

    assert vllm_plugin.install_lora_fix() == []

    assert punica_cpu.bgmv_shrink is someone_elses_shrink
    assert not any(_bound_to_fixed_ops(m, n) for m, n in PATCH_SITES)
    assert any(r.levelno == logging.WARNING for r in plugin_log)


def test_plugin_module_imports_neither_torch_nor_vllm() -> None:
    code = (
        "import sys, gateway.engine.vllm_plugin; "
        "print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_plugin_is_declared_as_a_vllm_general_plugin() -> None:
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    values = {ep.name: ep.value for ep in eps}
    assert values.get("lora_gateway") == "gateway.engine.vllm_plugin:register"


# --- the CPU punica wrapper end to end (linear prefill/decode, lm_head logits) ---------------

# Requests: slot 0 (2 prompt tokens), base (3), slot 3 = the last slot (2), slot 1 (1).
_REQUEST_SLOTS = (0, -1, 3, 1)
_REQUEST_LENS = (2, 3, 2, 1)


def _wrapper(is_prefill: bool) -> object:
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    # vLLM's LoRA ids are slot + 1; id 0 is "no adapter".
    ids = [s + 1 for s in _REQUEST_SLOTS]
    if is_prefill:
        index_mapping = tuple(i for i, n in zip(ids, _REQUEST_LENS, strict=True) for _ in range(n))
    else:
        index_mapping = tuple(ids)
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=8, device="cpu")
    mapping = LoRAMapping(index_mapping, tuple(ids), is_prefill=is_prefill)
    wrapper.update_metadata(mapping, [1, 2, 3, 4], SLOTS, VOCAB)
    return wrapper


def _token_slots(is_prefill: bool) -> tuple[int, ...]:
    if not is_prefill:
        return _REQUEST_SLOTS
    return tuple(s for s, n in zip(_REQUEST_SLOTS, _REQUEST_LENS, strict=True) for _ in range(n))


@pytest.mark.parametrize("fix_on", [True, False], ids=["fix-on", "fix-off"])
@pytest.mark.parametrize("is_prefill", [True, False], ids=["prefill", "decode"])
def test_punica_cpu_linear_lora_isolates_base_tokens_only_with_the_fix(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    stack: LoraStack,
    gen: torch.Generator,
    fix_on: bool,
    is_prefill: bool,
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "1" if fix_on else "0")
    vllm_plugin.register()
    wrapper = _wrapper(is_prefill)
    slots = _token_slots(is_prefill)
    x = torch.randn(len(slots), HIDDEN, generator=gen)
    y = torch.randn(len(slots), HIDDEN, generator=gen)
    before = y.clone()

    add_lora_linear: Callable[..., None] = wrapper.add_lora_linear  # type: ignore[attr-defined]
    add_lora_linear(y, x, (stack.lora_a,), (stack.lora_b,), SCALE, (HIDDEN,))

    base_rows = _base_rows(slots)
    assert base_rows
    untouched = [torch.equal(y[row], before[row]) for row in base_rows]
    assert all(untouched) if fix_on else not any(untouched)
    for row in _adapter_rows(slots):
        shrunk = _delta64(x[row], stack.lora_a, slots[row], SCALE)
        expected = before[row].double() + stack.lora_b[slots[row], 0].double() @ shrunk
        torch.testing.assert_close(y[row].double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fix_on", [True, False], ids=["fix-on", "fix-off"])
def test_punica_cpu_logits_lora_isolates_base_requests_only_with_the_fix(
    pristine_vllm: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    gen: torch.Generator,
    fix_on: bool,
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "1" if fix_on else "0")
    vllm_plugin.register()
    wrapper = _wrapper(is_prefill=True)
    # One hidden state per request: the logits path uses per-request (sampler) indices.
    hidden = torch.randn(len(_REQUEST_SLOTS), HIDDEN, generator=gen)
    logits = torch.randn(len(_REQUEST_SLOTS), VOCAB, generator=gen)
    before = logits.clone()
    lm_a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen) * 0.05
    lm_b = torch.randn(SLOTS, 1, VOCAB, RANK, generator=gen) * 0.05

    wrapper.add_lora_logits(logits, hidden, lm_a, lm_b, 1.0)  # type: ignore[attr-defined]

    base = _REQUEST_SLOTS.index(-1)
    assert torch.equal(logits[base], before[base]) is fix_on
    for row, slot in enumerate(_REQUEST_SLOTS):
        if slot < 0:
            continue
        expected = before[row].double() + lm_b[slot, 0].double() @ _delta64(hidden[row], lm_a, slot)
        torch.testing.assert_close(logits[row].double(), expected, rtol=1e-4, atol=1e-4)
