"""Trained heads kept on disk: a table's head is trained once, not at every start.

Training the demo table's head takes some ten seconds on one core; a restart, a second
replica on the same machine or a command that evaluates the table would pay it again for
the same result. A head depends only on what it is trained from (the classes, their texts
and vectors, `c`, `lexical`, `words`) and on the libraries that train it, so it is stored
under a key of all of these. Files hold arrays and JSON only (no pickle: nothing in the
cache runs code when read); the analysers are rebuilt from their kind. A missing or
unreadable file is a miss: the head is trained again and stored. The newest `KEEP` heads
are kept (the demo table's and the five of its cross-fitting folds among them; some 7 MB
each).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from gateway.routing.embedder import Vectors
from gateway.routing.head import Head, Lexicon, analyzer_of
from gateway.routing.npzfile import Arrays, from_json_array, json_array, read_arrays, write_arrays

log = logging.getLogger(__name__)

KEEP = 16


def head_key(
    groups: Sequence[tuple[str, Sequence[str], Vectors]], *, c: float, lexical: float, words: float
) -> str:
    """What a trained head depends on: its classes' texts and vectors, its settings and the
    versions of the libraries that train it."""
    digest = hashlib.sha256()
    libraries = [f"{name}={version(name)}" for name in ("scikit-learn", "scipy", "numpy")]
    digest.update(json.dumps([c, lexical, words, libraries]).encode())
    for name, texts, vectors in groups:
        digest.update(json.dumps([name, list(texts)]).encode())
        digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


class HeadCache:
    """Heads in `directory/head-<key>.npz`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str) -> Path:
        return self.directory / f"head-{key}.npz"

    def get(self, key: str) -> Head | None:
        """The stored head of `key`, if there is a readable one."""
        path = self._path(key)
        arrays = read_arrays(path, "head")
        if arrays is None:
            return None
        try:
            return _head_of(arrays)
        except (KeyError, ValueError) as exc:
            log.warning("ignoring the unreadable head %s: %s", path, exc)
            return None

    def put(self, key: str, head: Head) -> None:
        """Store `head` atomically and drop all but the newest `KEEP` heads."""
        if not write_arrays(self._path(key), _arrays_of(head), "head"):
            return
        heads = sorted(self.directory.glob("head-*.npz"), key=lambda p: p.stat().st_mtime_ns)
        for old in heads[:-KEEP]:
            old.unlink(missing_ok=True)


def _arrays_of(head: Head) -> Arrays:
    arrays: Arrays = {
        "classes": json_array(list(head.classes)),
        "kinds": json_array([lexicon.kind for lexicon in head.lexicons]),
        "weights": head.weights,
        "bias": head.bias,
    }
    for i, lexicon in enumerate(head.lexicons):
        grams = sorted(lexicon.vocabulary, key=lexicon.vocabulary.__getitem__)
        arrays[f"grams{i}"] = json_array(grams)
        arrays[f"idf{i}"] = lexicon.idf
        arrays[f"gram_weights{i}"] = lexicon.weights
    return arrays


def _head_of(arrays: Arrays) -> Head:
    classes = from_json_array(arrays["classes"])
    kinds = from_json_array(arrays["kinds"])
    if not isinstance(classes, list) or not isinstance(kinds, list):
        raise ValueError("not a stored head")
    lexicons = []
    for i, kind in enumerate(kinds):
        grams = from_json_array(arrays[f"grams{i}"])
        if not isinstance(grams, list):
            raise ValueError("not a stored head")
        lexicons.append(
            Lexicon(
                analyzer_of(str(kind)),
                {gram: n for n, gram in enumerate(grams)},
                arrays[f"idf{i}"],
                arrays[f"gram_weights{i}"],
                str(kind),
            )
        )
    weights, bias = arrays["weights"], arrays["bias"]
    if weights.shape[0] != len(classes) or bias.shape != (len(classes),):
        raise ValueError("the stored head's shapes do not match")
    return Head(tuple(str(c) for c in classes), weights, bias, tuple(lexicons))
