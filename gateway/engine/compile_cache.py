"""Let vLLM load the compiled model it saved on the CPU platform (vLLM 0.32, torch 2.13).

vLLM saves the compiled model as a torch AOT artifact under
`$VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile/<key>/rank_0_0/model` and, on the
next start with the same settings, loads it and calls
`artifact.compiled_fn.finalize_loading(vllm_config)`. Only vLLM's own backend
(`VllmSerializableFunction`, compilation mode VLLM_COMPILE) has that method. The CPU
platform compiles in mode DYNAMO_TRACE_ONCE with the plain "inductor" backend, for which
torch stores a `BundledAOTAutogradSerializableCallable`; that object forwards unknown
attributes to the compiled function, a plain function. Every load therefore fails with
`'function' object has no attribute 'finalize_loading'`, vLLM compiles again and saves
again, at every start.

The fix gives that callable a `finalize_loading` that does nothing: once deserialized it
is complete (inductor's output code is bundled in it; its C++ kernels are built, or found
in the inductor cache, when the module loads). Those kernels were generated for the vector
ISA of the CPU that compiled them (AVX2, AVX-512, AMX), and torch checks only an
artifact's Python and torch versions, so the ISA is added to vLLM's cache key too: a cache
directory shared by different CPUs misses instead of running another CPU's kernels.

Fallback: when vLLM or torch do not look as this was written for, nothing is patched (a
warning says why) and vLLM compiles the model at every start, as released.
`VLLM_DISABLE_COMPILE_CACHE=1` switches vLLM's compile cache off altogether.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

# A child of vLLM's logger, like the plugin's, so that its records reach the engine's log.
log = logging.getLogger("vllm.plugins.lora_gateway")

CALLABLE_MODULE = "torch._dynamo.aot_compile_types"
CALLABLE_CLASS = "BundledAOTAutogradSerializableCallable"
LOADER_MODULE = "vllm.compilation.decorators"
LOADER = "_try_load_aot_compiled_fn"
KEY_MODULE = "vllm.compilation.caching"
KEY_FUNCTION = "aot_compile_hash_factors"
FINALIZE = "finalize_loading"
ISA_FACTOR = "lora_gateway_cpu_vec_isa="

# What install() replaced, kept so that uninstall() can put it back.
_installed: dict[str, Any] = {}


class UnexpectedCompileCacheError(RuntimeError):
    """vLLM or torch do not load compiled models the way this fix was written for."""


def finalize_loading(self: Any, vllm_config: Any) -> None:
    """Nothing left to do: a deserialized inductor artifact is ready to run."""


@functools.cache
def cpu_vec_isa() -> str:
    """The vector ISA inductor generates CPU kernels for, e.g. "VecAVX512VNNI:avx512"."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return f"{type(isa).__name__}:{isa}"


def isa_keyed(original: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
    """Wrap vLLM's AOT cache-key factors so that a CPU model's key names the vector ISA."""

    def aot_compile_hash_factors(vllm_config: Any) -> list[str]:
        factors = list(original(vllm_config))
        device_config = getattr(vllm_config, "device_config", None)
        if getattr(device_config, "device_type", None) == "cpu":
            isa = cpu_vec_isa()
            factors.append(ISA_FACTOR + isa)
            log.info("compile cache key names the CPU's vector ISA: %s", isa)
        return factors

    aot_compile_hash_factors.__wrapped__ = original  # type: ignore[attr-defined]
    return aot_compile_hash_factors


def install_compile_cache_fix() -> bool:
    """Make vLLM's saved CPU compile artifacts loadable (idempotent); False if not installed."""
    if _installed:
        return True
    try:
        callable_class, key_module, key_function = _targets()
    except UnexpectedCompileCacheError as exc:
        log.warning(
            "compile cache fix not installed, vLLM compiles the model at every start: %s", exc
        )
        return False
    _installed[FINALIZE] = callable_class
    _installed[KEY_FUNCTION] = key_function
    setattr(callable_class, FINALIZE, finalize_loading)
    setattr(key_module, KEY_FUNCTION, isa_keyed(key_function))
    log.info(
        "compile cache fix installed: %s.%s loads without vLLM's backend; the cache key "
        "names the CPU's vector ISA",
        CALLABLE_MODULE,
        CALLABLE_CLASS,
    )
    return True


def compile_cache_fix_installed() -> bool:
    """Whether this process runs with the fix in place."""
    return bool(_installed)


def uninstall_compile_cache_fix() -> None:
    """Take the fix out again (tests)."""
    callable_class = _installed.pop(FINALIZE, None)
    if callable_class is not None and FINALIZE in callable_class.__dict__:
        delattr(callable_class, FINALIZE)
    key_function = _installed.pop(KEY_FUNCTION, None)
    if key_function is not None:
        setattr(importlib.import_module(KEY_MODULE), KEY_FUNCTION, key_function)


def _targets() -> tuple[type, Any, Callable[[Any], list[str]]]:
    """The torch class to complete and vLLM's key function, after checking both."""
    try:
        callable_class = getattr(importlib.import_module(CALLABLE_MODULE), CALLABLE_CLASS)
        loader = getattr(importlib.import_module(LOADER_MODULE), LOADER)
        key_module = importlib.import_module(KEY_MODULE)
        key_function = getattr(key_module, KEY_FUNCTION)
    except (ImportError, AttributeError) as exc:
        raise UnexpectedCompileCacheError(f"cannot find what the fix patches: {exc}") from exc
    if not isinstance(callable_class, type):
        raise UnexpectedCompileCacheError(f"{CALLABLE_MODULE}.{CALLABLE_CLASS} is not a class")
    if hasattr(callable_class, FINALIZE):
        # torch (or someone else) defines it now: theirs is the one to run.
        raise UnexpectedCompileCacheError(f"{CALLABLE_CLASS} already has {FINALIZE}")
    try:
        source = inspect.getsource(loader)
    except (OSError, TypeError) as exc:
        raise UnexpectedCompileCacheError(f"cannot read {LOADER_MODULE}.{LOADER}: {exc}") from exc
    if f".compiled_fn.{FINALIZE}(" not in source:
        raise UnexpectedCompileCacheError(f"{LOADER_MODULE}.{LOADER} does not call {FINALIZE}")
    if getattr(key_function, "__wrapped__", None) is not None:
        raise UnexpectedCompileCacheError(f"{KEY_MODULE}.{KEY_FUNCTION} is already wrapped")
    return callable_class, key_module, key_function
