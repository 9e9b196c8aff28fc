"""vLLM general plugin of the gateway, loaded through the `vllm.general_plugins` entry point.

vLLM calls `register()` in each process it starts (API server, engine core, workers),
so it is idempotent and this module imports nothing heavy: vLLM and torch are only
touched inside `register()`.

What it installs: (1) `gateway.engine.int8_lora`, which lets LoRA wrap int8 layers on CPUs
without AMX; (2) the LoRA isolation fix; (3) the grouped LoRA ops
(`gateway.engine.punica_grouped`) as the CPU platform's punica wrapper, and torch.compile
back on for LoRA models, which vLLM's CPU platform otherwise turns off; (4) with compiling
on, `gateway.engine.compile_cache`, which lets vLLM load the compiled model it saved at an
earlier start instead of compiling it again.

vLLM 0.32's CPU LoRA ops index the stacked adapter weights with per-token LoRA indices
where -1 means "no adapter"; `weights[-1]` is the last adapter slot, so base requests
batched with adapter requests receive that adapter's delta. `gateway.engine.lora_ops`
holds fixed ops, and they are bound under every name vLLM's CPU backend looks them up by
(the grouped wrapper does not call them, but the `vllm` ops choice does).

Switches, read from the engine's environment:
- `LORA_GATEWAY_LORA_OPS=grouped` (default) or `vllm`: vLLM's own per-token ops (with the
  isolation fix), for comparison or as a fallback;
- `LORA_GATEWAY_LORA_COMPILE=1` (default) or `0`: compile LoRA models (grouped ops only)
  and load compiled models from vLLM's cache (`0` leaves vLLM's cache as released);
- `LORA_GATEWAY_LORA_FIX=0`: vLLM exactly as released, bug included (implies `vllm` ops).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

# A child of vLLM's logger: vLLM puts its handler on "vllm" and stops propagation there,
# so this is the name under which the records show up in the engine's log.
log = logging.getLogger("vllm.plugins.lora_gateway")

LORA_FIX_ENV = "LORA_GATEWAY_LORA_FIX"
LORA_OPS_ENV = "LORA_GATEWAY_LORA_OPS"
LORA_COMPILE_ENV = "LORA_GATEWAY_LORA_COMPILE"
LORA_OPS_CHOICES = ("grouped", "vllm")

# The ops' layout and semantics were read from this vLLM release; others are left alone.
SUPPORTED_VLLM = (0, 32)

FIXED_OPS_MODULE = "gateway.engine.lora_ops"
VLLM_OPS_MODULE = "vllm.lora.ops.torch_ops.lora_ops"

# Each module keeps its own binding of the ops (`from ... import`), so each is patched:
# the ops module (its sgmv_* wrappers look bgmv_* up there), the package re-export,
# and the CPU punica wrapper (linear layers, embeddings and the lm_head logits path).
PATCH_MODULES: tuple[str, ...] = (
    VLLM_OPS_MODULE,
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)

OP_NAMES: tuple[str, ...] = (
    "bgmv_expand",
    "bgmv_expand_slice",
    "bgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
    "sgmv_shrink",
)

# (module name, op name) -> vLLM's function, kept so the fix can be taken out again.
_originals: dict[tuple[str, str], object] = {}
_disabled_warned = False
# (class, attribute) -> vLLM's own, for the grouped ops' class patches.
_class_originals: dict[tuple[type, str], object] = {}


class UnexpectedVllmError(RuntimeError):
    """The installed vLLM does not look like the one the fix was written for."""


def lora_fix_enabled(environ: Mapping[str, str]) -> bool:
    """Whether the LoRA isolation fix is switched on (`LORA_GATEWAY_LORA_FIX`, default "1")."""
    value = environ.get(LORA_FIX_ENV, "1").strip()
    if value == "0":
        return False
    if value != "1":
        # Isolation is a correctness property: an unreadable switch must not turn it off.
        log.warning("%s=%r is neither 0 nor 1; keeping the LoRA fix on", LORA_FIX_ENV, value)
    return True


def lora_ops_choice(environ: Mapping[str, str]) -> str:
    """Which LoRA ops the engine runs (`LORA_GATEWAY_LORA_OPS`): "grouped" or "vllm"."""
    value = environ.get(LORA_OPS_ENV, "grouped").strip().lower()
    if value not in LORA_OPS_CHOICES:
        log.warning("%s=%r is not one of %s; using grouped", LORA_OPS_ENV, value, LORA_OPS_CHOICES)
        return "grouped"
    return value


def lora_compile_enabled(environ: Mapping[str, str]) -> bool:
    """Whether LoRA models are compiled with the grouped ops (`LORA_GATEWAY_LORA_COMPILE`)."""
    return environ.get(LORA_COMPILE_ENV, "1").strip() != "0"


def register() -> None:
    """Install the gateway's engine patches into vLLM (idempotent)."""
    global _disabled_warned
    from gateway.engine.int8_lora import install_int8_lora_device_fix

    install_int8_lora_device_fix()
    if lora_fix_enabled(os.environ):
        install_lora_fix()
        compile_lora = lora_compile_enabled(os.environ)
        if lora_ops_choice(os.environ) == "grouped":
            install_grouped_ops(compile_lora=compile_lora)
        if compile_lora:
            from gateway.engine.compile_cache import install_compile_cache_fix

            install_compile_cache_fix()
        return
    if not _disabled_warned:
        _disabled_warned = True
        log.warning(
            "%s=0: keeping vLLM's LoRA ops; base requests batched with adapter requests are "
            "NOT isolated (they get the last LoRA slot's adapter delta)",
            LORA_FIX_ENV,
        )


def install_lora_fix() -> list[str]:
    """Bind the fixed ops wherever vLLM's CPU backend looks them up; return what was patched."""
    try:
        modules = _patch_targets()
    except UnexpectedVllmError as exc:
        log.warning("LoRA fix not installed, vLLM left untouched: %s", exc)
        return []
    fixed = importlib.import_module(FIXED_OPS_MODULE)
    patched: list[str] = []
    for module in modules:
        for name in OP_NAMES:
            replacement = getattr(fixed, name)
            current = getattr(module, name)
            if current is replacement:
                continue
            _originals.setdefault((module.__name__, name), current)
            setattr(module, name, replacement)
            patched.append(f"{module.__name__}.{name}")
    if patched:
        by_module: dict[str, list[str]] = {}
        for qualified in patched:
            module_name, _, op_name = qualified.rpartition(".")
            by_module.setdefault(module_name, []).append(op_name)
        log.info(
            "LoRA fix installed (negative LoRA index = no adapter), patched: %s",
            "; ".join(f"{m}.{{{','.join(ops)}}}" for m, ops in by_module.items()),
        )
    return patched


def lora_fix_installed() -> bool:
    """Whether this process currently runs the fixed ops in place of vLLM's."""
    return bool(_originals)


def uninstall_lora_fix() -> None:
    """Put vLLM's own ops back where the fix replaced them."""
    for (module_name, name), original in _originals.items():
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, name, original)
    _originals.clear()


def install_grouped_ops(*, compile_lora: bool) -> bool:
    """Make the CPU platform hand out the grouped punica wrapper (and compile LoRA models)."""
    try:
        _patch_targets()
        from vllm.platforms.cpu import CpuPlatform

        from gateway.engine.punica_grouped import QUALNAME
    except (UnexpectedVllmError, ImportError) as exc:
        log.warning("grouped LoRA ops not installed, keeping vLLM's: %s", exc)
        return False
    if not grouped_ops_installed():
        _replace(CpuPlatform, "get_punica_wrapper", classmethod(lambda cls: QUALNAME))
        log.info("grouped LoRA ops installed: %s", QUALNAME)
    if compile_lora and (CpuPlatform, "check_and_update_config") not in _class_originals:
        original = CpuPlatform.__dict__["check_and_update_config"]
        _replace(
            CpuPlatform, "check_and_update_config", classmethod(_compiling_lora(original.__func__))
        )
    return True


def grouped_ops_installed() -> bool:
    """Whether this process hands out the grouped punica wrapper."""
    return any(name == "get_punica_wrapper" for _, name in _class_originals)


def uninstall_grouped_ops() -> None:
    """Put the CPU platform's own methods back."""
    for (owner, name), original in _class_originals.items():
        setattr(owner, name, original)
    _class_originals.clear()


def _replace(owner: type, name: str, replacement: object) -> None:
    """Set a class attribute, keeping the original to put back."""
    _class_originals[(owner, name)] = owner.__dict__[name]
    setattr(owner, name, replacement)


def _compiling_lora(check: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """Wrap the CPU platform's config check so that LoRA no longer forces eager mode.

    vLLM turns compilation off for LoRA on CPU because its ops branch in Python on the
    step's metadata, which a graph traced once would freeze. The grouped ops keep every
    such branch inside opaque custom ops, so the compiled graph stays valid.
    """

    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        from vllm.config import CompilationMode

        requested = vllm_config.compilation_config.mode
        check(cls, vllm_config)
        config = vllm_config.compilation_config
        if (
            vllm_config.lora_config is not None
            and requested == CompilationMode.VLLM_COMPILE
            and config.mode == CompilationMode.NONE
        ):
            config.mode = CompilationMode.DYNAMO_TRACE_ONCE
            log.info("LoRA model compiled (grouped LoRA ops are opaque custom ops)")

    return check_and_update_config


def _patch_targets() -> list[ModuleType]:
    """Import the modules to patch and check they hold the ops this fix replaces."""
    try:
        import vllm
    except ImportError as exc:
        raise UnexpectedVllmError(f"vLLM is not importable: {exc}") from exc
    version = _major_minor(str(getattr(vllm, "__version__", "")))
    if version != SUPPORTED_VLLM:
        raise UnexpectedVllmError(
            f"vLLM {getattr(vllm, '__version__', '?')} is not "
            f"{'.'.join(map(str, SUPPORTED_VLLM))}.x"
        )
    try:
        modules = [importlib.import_module(name) for name in PATCH_MODULES]
        fixed = importlib.import_module(FIXED_OPS_MODULE)
    except ImportError as exc:
        raise UnexpectedVllmError(f"cannot import a LoRA ops module: {exc}") from exc
    ops_module = modules[0]
    for name in OP_NAMES:
        replacement = getattr(fixed, name)
        original = getattr(ops_module, name, None)
        if original is None:
            raise UnexpectedVllmError(f"{VLLM_OPS_MODULE} has no {name}")
        if original is not replacement and _parameters(original) != _parameters(replacement):
            raise UnexpectedVllmError(f"{VLLM_OPS_MODULE}.{name} has an unexpected signature")
        for module in modules[1:]:
            bound = getattr(module, name, None)
            if bound is not original and bound is not replacement:
                # Someone else replaced it: ours would silently undo their change.
                raise UnexpectedVllmError(f"{module.__name__}.{name} is not vLLM's {name}")
    return modules


def _parameters(func: object) -> list[str] | None:
    """Parameter names of a callable, or None when it has no readable signature."""
    if not callable(func):
        return None
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _major_minor(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string such as "0.32.0+cpu", or None."""
    parts = version.split("+", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None
