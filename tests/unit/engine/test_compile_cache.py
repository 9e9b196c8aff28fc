"""The engine plugin's compile-cache fix: vLLM loads the CPU model it compiled at an earlier
start instead of compiling it again, and a cache made on another CPU's vector ISA misses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable
from vllm.compilation import caching, decorators
from vllm.config import VllmConfig

from gateway.engine import compile_cache, vllm_plugin


@pytest.fixture
def pristine() -> Iterator[None]:
    """torch and vLLM as released for the test; the process's state put back after."""
    was_installed = compile_cache.compile_cache_fix_installed()
    compile_cache.uninstall_compile_cache_fix()
    yield
    compile_cache.uninstall_compile_cache_fix()
    if was_installed:
        compile_cache.install_compile_cache_fix()


def _double_plus_one(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


def _save_inductor_artifact(path: Path) -> None:
    """Compile and save the way vLLM's CPU platform does: AOT, plain "inductor" backend."""
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = torch.compile(
            _double_plus_one, fullgraph=True, dynamic=False, backend="inductor"
        )
    compiled.aot_compile(((torch.ones(8),), {})).save_compiled_function(str(path))


def _model_like_vllms(vllm_config: VllmConfig) -> Any:
    """The attributes vLLM's AOT loader reads from a compiled model."""
    return SimpleNamespace(
        vllm_config=vllm_config,
        compilation_config=vllm_config.compilation_config,
        forward=_double_plus_one,
        _is_encoder=False,
        _compile_tag="",
    )


@pytest.fixture(scope="module")
def inductor_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aot") / "model"
    _save_inductor_artifact(path)
    return path


def test_vllms_loader_rejects_its_own_cpu_artifact_without_the_fix(
    pristine: None, inductor_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model_like_vllms(VllmConfig())

    with caplog.at_level(logging.WARNING):
        loaded = decorators._try_load_aot_compiled_fn(model, str(inductor_artifact))

    # What every engine start logged before the fix: load, fail, compile again.
    assert loaded is None
    assert "'function' object has no attribute 'finalize_loading'" in caplog.text


def test_vllms_loader_loads_the_cpu_artifact_with_the_fix(
    pristine: None, inductor_artifact: Path
) -> None:
    assert compile_cache.install_compile_cache_fix()
    model = _model_like_vllms(VllmConfig())

    loaded = decorators._try_load_aot_compiled_fn(model, str(inductor_artifact))

    assert loaded is not None
    x = torch.arange(8, dtype=torch.float32)
    assert torch.equal(loaded(x), _double_plus_one(x))


def test_fix_gives_torchs_bundled_callable_a_no_op_finalize(pristine: None) -> None:
    def compiled(x: int) -> int:
        return x + 1

    compiled.serialize = lambda: b""  # type: ignore[attr-defined]
    bundled = BundledAOTAutogradSerializableCallable(compiled)
    with pytest.raises(AttributeError, match="finalize_loading"):
        bundled.finalize_loading(None)

    compile_cache.install_compile_cache_fix()

    assert bundled.finalize_loading(None) is None
    assert bundled(1) == 2


def _fake_factors(vllm_config: Any) -> list[str]:
    return ["env", "config"]


def _cpu_config() -> Any:
    return SimpleNamespace(device_config=SimpleNamespace(device_type="cpu"))


def test_cache_key_of_a_cpu_model_names_the_vector_isa(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compile_cache, "cpu_vec_isa", lambda: "VecAVX2:avx2")
    on_avx2 = compile_cache.isa_keyed(_fake_factors)(_cpu_config())
    monkeypatch.setattr(compile_cache, "cpu_vec_isa", lambda: "VecAMX:amx")
    on_amx = compile_cache.isa_keyed(_fake_factors)(_cpu_config())

    assert on_avx2 == ["env", "config", "lora_gateway_cpu_vec_isa=VecAVX2:avx2"]
    assert on_amx[:2] == on_avx2[:2] and on_amx != on_avx2


def test_cache_key_of_another_device_is_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compile_cache, "cpu_vec_isa", lambda: pytest.fail("ISA probed"))
    gpu = SimpleNamespace(device_config=SimpleNamespace(device_type="cuda"))

    assert compile_cache.isa_keyed(_fake_factors)(gpu) == ["env", "config"]


def test_cpu_vec_isa_names_what_inductor_picks() -> None:
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    assert compile_cache.cpu_vec_isa() == f"{type(isa).__name__}:{isa}"


def test_install_wraps_vllms_key_once_and_uninstall_restores(pristine: None) -> None:
    original = caching.aot_compile_hash_factors

    assert compile_cache.install_compile_cache_fix()
    assert compile_cache.install_compile_cache_fix()  # idempotent

    wrapped = caching.aot_compile_hash_factors
    assert getattr(wrapped, "__wrapped__", None) is original
    compile_cache.uninstall_compile_cache_fix()
    assert caching.aot_compile_hash_factors is original
    assert "finalize_loading" not in BundledAOTAutogradSerializableCallable.__dict__
    assert not compile_cache.compile_cache_fix_installed()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("LOADER", "_no_such_loader"),
        ("CALLABLE_CLASS", "NoSuchCallable"),
        ("KEY_FUNCTION", "no_such_key_function"),
    ],
)
def test_unexpected_vllm_or_torch_leaves_both_alone(
    pristine: None,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
    attribute: str,
    value: str,
) -> None:
    original = caching.aot_compile_hash_factors
    monkeypatch.setattr(compile_cache, attribute, value)

    assert not compile_cache.install_compile_cache_fix()

    assert caching.aot_compile_hash_factors is original
    assert "finalize_loading" not in BundledAOTAutogradSerializableCallable.__dict__
    warnings = [r.getMessage() for r in plugin_log if r.levelno == logging.WARNING]
    assert any("compiles the model at every start" in w for w in warnings), warnings


def test_a_loader_that_no_longer_finalizes_is_left_alone(
    pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def _try_load_aot_compiled_fn(model: Any, path: str) -> None:
        return None

    monkeypatch.setattr(decorators, "_try_load_aot_compiled_fn", _try_load_aot_compiled_fn)

    assert not compile_cache.install_compile_cache_fix()


def test_torchs_own_finalize_is_kept(pristine: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def theirs(self: Any, vllm_config: Any) -> None:
        return None

    monkeypatch.setattr(
        BundledAOTAutogradSerializableCallable, "finalize_loading", theirs, raising=False
    )

    assert not compile_cache.install_compile_cache_fix()
    assert BundledAOTAutogradSerializableCallable.finalize_loading is theirs


@pytest.fixture
def plugin_state(pristine: None, pristine_platform: None) -> None:
    """The plugin's switches unset and vLLM's platform as released; both put back after."""


@pytest.mark.parametrize(
    ("env", "installed"),
    [
        ({}, True),
        ({"LORA_GATEWAY_LORA_OPS": "vllm"}, True),
        ({"LORA_GATEWAY_LORA_COMPILE": "0"}, False),
        ({"LORA_GATEWAY_LORA_FIX": "0"}, False),
    ],
    ids=["defaults", "vllm-ops", "compile-off", "fix-off"],
)
def test_register_installs_the_fix_unless_switched_off(
    plugin_state: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], installed: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    vllm_plugin.register()

    assert compile_cache.compile_cache_fix_installed() is installed
