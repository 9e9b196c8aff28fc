"""Content digests of prepared files (the embedded GGUF, checkpoint shards).

Kept apart so that model preparation (`basemodel`) and quantization (`quantize`) can both
use it without importing each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
