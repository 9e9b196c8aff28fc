"""Example vectors kept on disk between starts: a table's thousands of examples are embedded
once per model and CPU kind, not at every start.

A route table is applied at every gateway start, and its examples (with the packaged
background, a few thousand texts) take the embedder some 15 to 30 seconds on one core. Their
vectors depend only on the text, the model file, the token limit and the CPU kind (int8
arithmetic differs slightly between AVX2, AVX-512 VNNI and AMX), so they are kept in one file
per such key under the cache directory. A missing, unreadable or foreign file is a miss, never
an error: the texts are embedded again and the file rewritten atomically. The file keeps at
most `MAX_TEXTS` vectors (the most recently stored), so a series of edited tables cannot grow
it without bound.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import numpy as np

from gateway.engine.cpu import cpu_flags
from gateway.routing.embedder import DIMENSIONS, Embedder, OnnxEmbedder, Vectors, file_sha256
from gateway.routing.npzfile import from_json_array, json_array, read_arrays, write_arrays

log = logging.getLogger(__name__)

MAX_TEXTS = 50_000
# The CPU features that change what int8 arithmetic gives (Linux names).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")


def cpu_kind() -> str:
    """The CPU features int8 results depend on, e.g. "avx2+avx512f+avx512_vnni"."""
    flags = cpu_flags()
    if not flags:
        return "unknown"
    return "+".join(flag for flag in ISA_FLAGS if flag in flags) or "baseline"


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def cache_key(model: Path, tokenizer: Path, window: str) -> str:
    """What a vector depends on besides its text: the model and tokenizer files, the token
    window a long text is cut to and the CPU kind."""
    parts = (_file_key(model), _file_key(tokenizer), window, cpu_kind())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def vector_cache(embedder: OnnxEmbedder, cache_dir: Path) -> VectorCache:
    """The vector cache of `embedder`'s model, token window and CPU kind under `cache_dir`."""
    key = cache_key(embedder.model_path, embedder.tokenizer_path, embedder.window)
    return VectorCache(cache_dir / "classifier", key)


def cached(embedder: OnnxEmbedder, cache_dir: Path) -> CachedEmbedder:
    """`embedder` with its vectors kept under `cache_dir`."""
    return CachedEmbedder(embedder, vector_cache(embedder, cache_dir))


class VectorCache:
    """Vectors by text in `directory/vectors-<key>.npz`. The file is read at each call and
    not held in memory: a table is built now and then, and the vectors it needs are kept by
    the router anyway."""

    def __init__(self, directory: Path, key: str) -> None:
        self.path = directory / f"vectors-{key}.npz"

    def _load(self) -> dict[str, Vectors]:
        arrays = read_arrays(self.path, "vector cache")
        if arrays is None:
            return {}
        try:
            texts, matrix = from_json_array(arrays["texts"]), arrays["vectors"]
        except (KeyError, ValueError) as exc:
            log.warning("ignoring the unreadable vector cache %s: %s", self.path, exc)
            return {}
        if not isinstance(texts, list) or matrix.shape != (len(texts), DIMENSIONS):
            log.warning("ignoring the vector cache %s: its shapes do not match", self.path)
            return {}
        return dict(zip(texts, matrix, strict=True))

    def found(self, texts: Iterable[str]) -> dict[str, Vectors]:
        """The stored vectors of those of `texts` that have one."""
        vectors = self._load()
        return {text: vectors[text] for text in texts if text in vectors}

    def store(self, new: Mapping[str, Vectors]) -> None:
        """Add `new` and rewrite the file atomically (a failed write only loses the cache)."""
        if not new:
            return
        vectors = self._load()
        for text, vector in new.items():
            vectors.pop(text, None)
            vectors[text] = np.asarray(vector, dtype=np.float32)
        while len(vectors) > MAX_TEXTS:
            vectors.pop(next(iter(vectors)))
        matrix = np.stack(list(vectors.values())).astype(np.float32)
        write_arrays(
            self.path, {"texts": json_array(list(vectors)), "vectors": matrix}, "vector cache"
        )


class CachedEmbedder:
    """An embedder whose vectors for texts seen before come from a `VectorCache`."""

    def __init__(self, inner: Embedder, cache: VectorCache) -> None:
        self.inner = inner
        self.cache = cache

    def embed(self, texts: list[str]) -> Vectors:
        known = self.cache.found(texts)
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            fresh = dict(zip(missing, self.inner.embed(missing), strict=True))
            self.cache.store(fresh)
            known.update(fresh)
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return np.stack([known[text] for text in texts])
