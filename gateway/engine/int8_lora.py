"""Let LoRA wrap int8 (W8A8) linear layers on CPUs without AMX.

vLLM 0.32's CPU int8 kernel keeps the weight only on AMX CPUs; elsewhere it uses oneDNN,
which prepacks the weight and sets `layer.weight = None`. vLLM's LoRA layer then asks that
`None` for its device at start-up (`AttributeError: 'NoneType' object has no attribute
'device'`). The weight's scale lives on the same device, so the LoRA layer is told that one.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vllm.plugins.lora_gateway")

_TARGET_MODULE = "vllm.lora.layers.base_linear"
_ATTRIBUTE = "_get_lora_device"
_original: Callable[[Any], Any] | None = None


def lora_device(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap vLLM's `_get_lora_device` so a prepacked int8 layer answers with its scale's device."""

    def _get_lora_device(base_layer: Any) -> Any:
        if getattr(base_layer, "weight", False) is None:
            scale = getattr(base_layer, "weight_scale", None)
            if scale is not None:
                return scale.device
        return original(base_layer)

    _get_lora_device.__wrapped__ = original  # type: ignore[attr-defined]
    return _get_lora_device


def install_int8_lora_device_fix() -> bool:
    """Patch vLLM's LoRA linear layers (idempotent); False when vLLM's layout is unexpected."""
    global _original
    try:
        module = importlib.import_module(_TARGET_MODULE)
    except ImportError as exc:
        log.warning("int8 LoRA device fix not installed: %s", exc)
        return False
    current = getattr(module, _ATTRIBUTE, None)
    if current is None:
        log.warning("int8 LoRA device fix not installed: %s has no %s", _TARGET_MODULE, _ATTRIBUTE)
        return False
    if getattr(current, "__wrapped__", None) is not None:
        return True
    _original = current
    setattr(module, _ATTRIBUTE, lora_device(current))
    return True


def uninstall_int8_lora_device_fix() -> None:
    """Put vLLM's own function back."""
    global _original
    if _original is not None:
        module = importlib.import_module(_TARGET_MODULE)
        setattr(module, _ATTRIBUTE, _original)
        _original = None
