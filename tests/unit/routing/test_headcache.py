from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from gateway.routing import classifier, headcache
from gateway.routing.classifier import RouteIndex
from gateway.routing.embedder import DIMENSIONS, Vectors
from gateway.routing.head import Head, train_head
from gateway.routing.headcache import HeadCache, head_key
from gateway.routing.table import RouteTable

RNG = np.random.default_rng(3)
TEXTS = [
    ["hoist the mainsail", "reef the sails in a squall", "a sextant at dawn"],
    ["a croissant in Lyon", "conjugate the verb être", "Bordeaux wine"],
    ["sort a list in Python", "my sink is leaking", "the capital of Peru"],
]
PROBES = ["Hoist THE sails!", "un croissant, s'il vous plaît", "unknownzzz", ""]


def vectors(n: int) -> Vectors:
    rows = RNG.normal(size=(n, DIMENSIONS)).astype(np.float32)
    out: Vectors = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def trained(words: float = 1.0) -> Head:
    groups = [(name, vectors(3)) for name in ("sea", "france", "z")]
    return train_head(groups, c=4, texts=TEXTS, lexical=2.0, words=words)


@pytest.mark.parametrize("words", [0.0, 1.0])
def test_a_stored_head_gives_exactly_the_same_probabilities(tmp_path: Path, words: float) -> None:
    head = trained(words)
    cache = HeadCache(tmp_path)
    cache.put("k", head)
    back = cache.get("k")
    assert back is not None
    assert back.classes == head.classes
    assert [lex.kind for lex in back.lexicons] == [lex.kind for lex in head.lexicons]
    for probe, vector in zip(PROBES, vectors(len(PROBES)), strict=True):
        assert back.probabilities(vector, probe) == head.probabilities(vector, probe)


def test_a_missing_or_unreadable_head_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = HeadCache(tmp_path)
    assert cache.get("nothing") is None
    (tmp_path / "head-bad.npz").write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING):
        assert cache.get("bad") is None
    assert "unreadable head" in caplog.text


def test_only_the_newest_heads_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headcache, "KEEP", 2)
    cache, head = HeadCache(tmp_path), trained()
    for key in ("a", "b", "c"):
        cache.put(key, head)
    assert cache.get("a") is None
    assert cache.get("b") is not None and cache.get("c") is not None


def test_the_key_changes_with_every_input() -> None:
    sea = vectors(2)
    base = [("sea", ["ahoy", "sail"], sea), ("z", ["tax"], vectors(1))]
    key = head_key(base, c=4, lexical=2, words=1)
    assert key == head_key(base, c=4, lexical=2, words=1)
    changed_text = [("sea", ["ahoy", "sails"], sea), base[1]]
    changed_vector = [("sea", ["ahoy", "sail"], sea + 1e-3), base[1]]
    for other in (
        head_key(changed_text, c=4, lexical=2, words=1),
        head_key(changed_vector, c=4, lexical=2, words=1),
        head_key(base, c=8, lexical=2, words=1),
        head_key(base, c=4, lexical=2, words=0),
    ):
        assert other != key


def test_a_table_built_twice_is_trained_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = RouteTable.model_validate(
        {
            "method": "head",
            "head": {"background": "none", "lexical": 2.0, "words": 1.0},
            "routes": [{"name": "sea", "adapter": "pirate", "utterances": TEXTS[0]}],
            "default": {"utterances": TEXTS[2]},
        }
    )
    every = [text for texts in TEXTS for text in texts]
    fixed = {text: v for text, v in zip(every, vectors(9), strict=True)}

    async def embed_many(texts: list[str]) -> Vectors:
        return np.stack([fixed[t] for t in texts])

    calls: list[int] = []
    real = classifier.train_head

    def counting(*args: object, **kwargs: object) -> Head:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(classifier, "train_head", counting)
    heads = HeadCache(tmp_path)
    first = asyncio.run(RouteIndex.build(table, embed_many, heads=heads))
    second = asyncio.run(RouteIndex.build(table, embed_many, heads=heads))
    assert len(calls) == 1
    probe = fixed["hoist the mainsail"]
    assert first.scores(probe, "hoist") == second.scores(probe, "hoist")
    # Without a cache, every build trains.
    asyncio.run(RouteIndex.build(table, embed_many))
    assert len(calls) == 2
