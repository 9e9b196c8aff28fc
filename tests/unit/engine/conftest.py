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
