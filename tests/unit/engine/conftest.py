"""Fixtures shared by the engine plugin's tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.engine import vllm_plugin


@pytest.fixture
def plugin_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the plugin's logger (a vLLM child logger that does not reach the root)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.DEBUG)
    old_level = vllm_plugin.log.level
    vllm_plugin.log.addHandler(handler)
    vllm_plugin.log.setLevel(logging.DEBUG)
    yield records
    vllm_plugin.log.removeHandler(handler)
    vllm_plugin.log.setLevel(old_level)


@pytest.fixture
def pristine_platform(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """vLLM's CPU platform as released for the test, put back as it was after."""
    was_installed = vllm_plugin.grouped_ops_installed()
    fix_was_installed = vllm_plugin.lora_fix_installed()
    vllm_plugin.uninstall_grouped_ops()
    for name in (vllm_plugin.LORA_OPS_ENV, vllm_plugin.LORA_COMPILE_ENV, vllm_plugin.LORA_FIX_ENV):
        monkeypatch.delenv(name, raising=False)
    yield
    vllm_plugin.uninstall_grouped_ops()
    if was_installed:
        vllm_plugin.install_grouped_ops(compile_lora=True)
    if not fix_was_installed:
        vllm_plugin.uninstall_lora_fix()
