from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from gateway.routing import vectorcache
from gateway.routing.embedder import DIMENSIONS, Vectors, packaged_files
from gateway.routing.vectorcache import CachedEmbedder, VectorCache, cache_key, cpu_kind


@dataclass
class Counting:
    """A deterministic fake embedder that records which texts it was asked for."""

    asked: list[str] = field(default_factory=list)

    def embed(self, texts: list[str]) -> Vectors:
        self.asked.extend(texts)
        rows = np.zeros((len(texts), DIMENSIONS), np.float32)
        for row, text in enumerate(texts):
            rows[row, len(text) % DIMENSIONS] = 1.0
            rows[row, (len(text) * 7 + 1) % DIMENSIONS] = 0.5
        return rows


def test_vectors_survive_a_restart_and_are_not_embedded_again(tmp_path: Path) -> None:
    first = Counting()
    texts = ["ahoy", "bonjour tout le monde", "ahoy", "howdy partner"]
    before = CachedEmbedder(first, VectorCache(tmp_path, "k")).embed(texts)
    assert first.asked == ["ahoy", "bonjour tout le monde", "howdy partner"]
    assert before.shape == (4, DIMENSIONS)
    assert np.array_equal(before[0], before[2])

    # A new process: a new cache object on the same file.
    second = Counting()
    after = CachedEmbedder(second, VectorCache(tmp_path, "k")).embed([*texts, "a new one"])
    assert second.asked == ["a new one"]
    assert np.array_equal(after[:4], before)
    # Another key is another file: nothing is shared.
    third = Counting()
    CachedEmbedder(third, VectorCache(tmp_path, "other")).embed(["ahoy"])
    assert third.asked == ["ahoy"]


def test_empty_input_gives_an_empty_matrix(tmp_path: Path) -> None:
    out = CachedEmbedder(Counting(), VectorCache(tmp_path, "k")).embed([])
    assert out.shape == (0, DIMENSIONS)
    assert not (tmp_path / "vectors-k.npz").exists()


def test_an_unreadable_file_is_a_miss_and_is_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "vectors-k.npz").write_bytes(b"not a numpy file")
    fake = Counting()
    with caplog.at_level(logging.WARNING):
        CachedEmbedder(fake, VectorCache(tmp_path, "k")).embed(["ahoy"])
    assert fake.asked == ["ahoy"]
    assert "unreadable vector cache" in caplog.text
    again = Counting()
    CachedEmbedder(again, VectorCache(tmp_path, "k")).embed(["ahoy"])
    assert again.asked == []


def test_the_file_keeps_the_most_recent_vectors_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vectorcache, "MAX_TEXTS", 3)
    cache = VectorCache(tmp_path, "k")
    CachedEmbedder(Counting(), cache).embed(["a", "bb", "ccc"])
    CachedEmbedder(Counting(), cache).embed(["dddd"])
    kept = VectorCache(tmp_path, "k").found(["a", "bb", "ccc", "dddd"])
    assert sorted(kept) == ["bb", "ccc", "dddd"]


def test_a_failed_write_only_loses_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the directory should be")
    fake = Counting()
    with caplog.at_level(logging.WARNING):
        out = CachedEmbedder(fake, VectorCache(blocked / "sub", "k")).embed(["ahoy"])
    assert out.shape == (1, DIMENSIONS)
    assert "could not write the vector cache" in caplog.text
    assert list(tmp_path.iterdir()) == [blocked]


def test_the_key_names_the_model_the_tokenizer_the_window_and_the_cpu(tmp_path: Path) -> None:
    tokenizer = packaged_files().tokenizer
    model = tmp_path / "model.onnx"
    model.write_bytes(b"one model")
    key = cache_key(model, tokenizer, "48+16")
    assert key == cache_key(model, tokenizer, "48+16")
    assert key != cache_key(model, tokenizer, "96+32")
    model.write_bytes(b"another model")
    assert cache_key(model, tokenizer, "48+16") != key
    assert cpu_kind() != ""


def test_a_file_whose_shapes_do_not_match_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = np.frombuffer(json.dumps(["a", "b"]).encode(), dtype=np.uint8)
    np.savez(tmp_path / "vectors-k.npz", texts=texts, vectors=np.zeros((3, 5), np.float32))
    with caplog.at_level(logging.WARNING):
        assert VectorCache(tmp_path, "k").found(["a"]) == {}
    assert "shapes do not match" in caplog.text
