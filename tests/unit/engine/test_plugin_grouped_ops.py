"""The engine plugin's grouped-ops switch: which punica wrapper vLLM's CPU platform hands out,
and whether a LoRA model is compiled."""

from __future__ import annotations

import inspect
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.config import CompilationMode
from vllm.platforms.cpu import CpuPlatform
from vllm.utils.import_utils import resolve_obj_by_qualname

from gateway.engine import punica_grouped, vllm_plugin

VLLM_WRAPPER = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"


def _config(*, lora: bool, mode: CompilationMode) -> Any:
    return SimpleNamespace(
        lora_config=object() if lora else None,
        compilation_config=SimpleNamespace(mode=mode),
    )


def _like_vllms_check(cls: Any, config: Any) -> None:
    """What vLLM's CPU check does to the mode: trace once, then eager whenever LoRA is on."""
    if config.compilation_config.mode == CompilationMode.VLLM_COMPILE:
        config.compilation_config.mode = CompilationMode.DYNAMO_TRACE_ONCE
    if config.lora_config is not None:
        config.compilation_config.mode = CompilationMode.NONE


def test_default_register_hands_out_the_grouped_wrapper(
    pristine_platform: None, plugin_log: list[logging.LogRecord]
) -> None:
    assert CpuPlatform.get_punica_wrapper() == VLLM_WRAPPER

    vllm_plugin.register()
    vllm_plugin.register()

    assert CpuPlatform.get_punica_wrapper() == punica_grouped.QUALNAME
    wrapper = resolve_obj_by_qualname(CpuPlatform.get_punica_wrapper())
    assert wrapper is punica_grouped.GroupedPunicaWrapperCPU
    installed = [r for r in plugin_log if "grouped LoRA ops installed" in r.getMessage()]
    assert len(installed) == 1
    assert vllm_plugin.lora_fix_installed()  # the fallback ops keep the isolation fix


def test_vllm_ops_choice_keeps_vllms_wrapper_with_the_fix(
    pristine_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_OPS_ENV, "vllm")

    vllm_plugin.register()

    assert CpuPlatform.get_punica_wrapper() == VLLM_WRAPPER
    assert not vllm_plugin.grouped_ops_installed()
    assert vllm_plugin.lora_fix_installed()


def test_fix_switched_off_keeps_vllms_wrapper(
    pristine_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_FIX_ENV, "0")
    vllm_plugin.uninstall_lora_fix()

    vllm_plugin.register()

    assert CpuPlatform.get_punica_wrapper() == VLLM_WRAPPER


def test_unknown_ops_choice_falls_back_to_grouped_with_a_warning(
    pristine_platform: None,
    monkeypatch: pytest.MonkeyPatch,
    plugin_log: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv(vllm_plugin.LORA_OPS_ENV, "fast")

    vllm_plugin.register()

    assert CpuPlatform.get_punica_wrapper() == punica_grouped.QUALNAME
    assert any(
        r.levelno == logging.WARNING and "LORA_GATEWAY_LORA_OPS" in r.getMessage()
        for r in plugin_log
    )


def test_uninstall_puts_the_platforms_own_methods_back(pristine_platform: None) -> None:
    own_check = CpuPlatform.__dict__["check_and_update_config"]
    vllm_plugin.install_grouped_ops(compile_lora=True)
    assert CpuPlatform.__dict__["check_and_update_config"] is not own_check

    vllm_plugin.uninstall_grouped_ops()

    assert CpuPlatform.__dict__["check_and_update_config"] is own_check
    assert CpuPlatform.get_punica_wrapper() == VLLM_WRAPPER


def test_compile_switch_off_leaves_the_config_check_alone(
    pristine_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    own_check = CpuPlatform.__dict__["check_and_update_config"]
    monkeypatch.setenv(vllm_plugin.LORA_COMPILE_ENV, "0")

    vllm_plugin.register()

    assert CpuPlatform.get_punica_wrapper() == punica_grouped.QUALNAME
    assert CpuPlatform.__dict__["check_and_update_config"] is own_check


def test_lora_model_is_compiled_when_compilation_was_asked_for() -> None:
    check = vllm_plugin._compiling_lora(_like_vllms_check)
    config = _config(lora=True, mode=CompilationMode.VLLM_COMPILE)

    check(CpuPlatform, config)

    assert config.compilation_config.mode == CompilationMode.DYNAMO_TRACE_ONCE


def test_eager_request_stays_eager_with_lora() -> None:
    check = vllm_plugin._compiling_lora(_like_vllms_check)
    config = _config(lora=True, mode=CompilationMode.NONE)

    check(CpuPlatform, config)

    assert config.compilation_config.mode == CompilationMode.NONE


def test_models_without_lora_keep_vllms_choice() -> None:
    check = vllm_plugin._compiling_lora(_like_vllms_check)
    config = _config(lora=False, mode=CompilationMode.VLLM_COMPILE)

    check(CpuPlatform, config)

    assert config.compilation_config.mode == CompilationMode.DYNAMO_TRACE_ONCE


def test_the_real_cpu_check_still_forces_eager_for_lora() -> None:
    """The patch is needed: vLLM's own check (this release) turns compilation off for LoRA."""
    own = vllm_plugin._class_originals.get(
        (CpuPlatform, "check_and_update_config"), CpuPlatform.__dict__["check_and_update_config"]
    )
    source = inspect.getsource(own.__func__)
    assert "lora_config is not None" in source
    assert "CompilationMode.NONE" in source
