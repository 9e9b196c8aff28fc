"""The learned head of `method: head`: probabilities over the routes instead of raw cosines.

A multinomial logistic regression over the sentence embeddings, trained when a table is put
from what the table says: each route's utterances (and description), the default route's
utterances plus, unless the table says `background: none`, a packaged set of generic prompts
from many unrelated domains (the default route as "everything else"), and, when the table
reads context, a packaged set of topic-free follow-ups ("and the next one?") as a class of
its own. Classes are balanced (each weighs the same in the loss whatever its size), so the
large background does not drown the routes. The probabilities sum to one across the routes,
the default and the follow-up class, so a threshold on them reads the same way on any table.

Beside the sentence embedding, the head reads the text's character n-grams (2 to 5
characters within words, TF-IDF weighted, scaled by `lexical`): names and terms of art (a
cheese, a rodeo event, an instrument) that the small embedding model blurs together are
spelled out there. On the demo tuning set this lifted accuracy at the same off-topic rate
by about four points in 2- and 5-fold cross-validation (docs/routing.md). With `words` > 0
it also reads the text's words and word pairs (TF-IDF, scaled by `lexical * words`): whole
terms ("franchise tag", "remuda") weigh as one feature instead of a dozen shared n-grams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.routing.embedder import Vectors

# The follow-up class's name: not a valid route name, so it never clashes with one.
FOLLOW_UP = "(follow-up)"
BACKGROUND_FILE = "background.txt"
FOLLOW_UP_FILE = "followups.txt"


@cache
def packaged_texts(name: str) -> tuple[str, ...]:
    """The lines of a packaged text file under `gateway/routing/data/`."""
    text = resources.files("gateway.routing").joinpath("data", name).read_text("utf-8")
    return tuple(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


@dataclass(frozen=True)
class Lexicon:
    """One n-gram part of a head (characters, or words): scikit-learn's analyser, vocabulary
    and idf of the fitted vectoriser, and the head's weights per n-gram (already scaled by
    their weight, `lexical` or `lexical * words`).

    `logits(text)` computes exactly what `vectorizer.transform([text]) @ weights` does
    (sublinear tf times idf, L2-normalised), several times faster for one text: scikit-learn
    builds a sparse matrix per call, which costs more than the model's arithmetic here."""

    analyzer: Callable[[str], list[str]]
    vocabulary: Mapping[str, int]
    idf: npt.NDArray[np.float32]  # (n-grams,)
    weights: npt.NDArray[np.float32]  # (n-grams, classes)
    # The vectoriser's analyser: "char_wb" (character n-grams) or "word" (words and pairs).
    kind: str = "char_wb"

    def logits(self, text: str) -> npt.NDArray[np.float32]:
        # Look each n-gram up once, then count the ids in numpy (sorted; the sum is the same).
        found = [i for i in map(self.vocabulary.get, self.analyzer(text)) if i is not None]
        if not found:
            return np.zeros(self.weights.shape[1], np.float32)
        ids, counts = np.unique(np.asarray(found, dtype=np.intp), return_counts=True)
        x = (1.0 + np.log(counts)).astype(np.float32) * self.idf[ids]
        x = (x / np.linalg.norm(x)).astype(np.float32)
        return np.asarray(x @ self.weights[ids], dtype=np.float32)


@dataclass(frozen=True)
class Head:
    """A trained head: `probabilities(vector, text)` in about a tenth of a millisecond."""

    classes: tuple[str, ...]
    weights: npt.NDArray[np.float32]  # (classes, dimensions)
    bias: npt.NDArray[np.float32]  # (classes,)
    # The text's n-gram parts: characters, then (if the table reads them) words.
    lexicons: tuple[Lexicon, ...] = ()

    def probabilities(self, vector: Vectors, text: str = "") -> dict[str, float]:
        """Every class's probability for one text's unit vector (and its text)."""
        logits = self.weights @ vector + self.bias
        for lexicon in self.lexicons:
            logits = logits + lexicon.logits(text)
        logits = logits - logits.max()
        exp = np.exp(logits)
        values = exp / exp.sum()
        return {name: float(p) for name, p in zip(self.classes, values, strict=True)}


def vectorizer_of(texts: Sequence[str], analyzer: str = "char_wb") -> Any:
    """The TF-IDF vectoriser fitted on `texts`: character n-grams (2 to 5 within words) or,
    with `analyzer="word"`, words and word pairs."""
    return _vectorizer(analyzer).fit(texts)


def _vectorizer(analyzer: str) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    ngrams = (1, 2) if analyzer == "word" else (2, 5)
    return TfidfVectorizer(
        analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, dtype=np.float32
    )


def analyzer_of(kind: str) -> Callable[[str], list[str]]:
    """The text analyser of a lexicon of `kind` (what its vectoriser was fitted with)."""
    analyzer: Callable[[str], list[str]] = _vectorizer(kind).build_analyzer()
    return analyzer


def train_head(
    groups: Sequence[tuple[str, Vectors]],
    *,
    c: float,
    texts: Sequence[Sequence[str]] | None = None,
    lexical: float = 0.0,
    words: float = 0.0,
) -> Head:
    """Fit the head on `(class, vectors)` groups (at least two non-empty classes); with
    `lexical` > 0, also on the character n-grams of `texts` (one list per group) and, with
    `words` > 0, on their words and word pairs (weighted `lexical * words`)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    kept = [i for i, (_, vectors) in enumerate(groups) if len(vectors)]
    if len(kept) < 2:
        raise ValueError("the head needs examples of at least two classes")
    dense = np.concatenate([groups[i][1] for i in kept])
    labels = np.concatenate([np.full(len(groups[i][1]), i) for i in kept])
    parts: list[tuple[Any, float]] = []  # (fitted vectoriser, weight)
    features: Any = dense
    if lexical > 0.0:
        if texts is None:
            raise ValueError("lexical features need the texts")
        corpus = [text for i in kept for text in texts[i]]
        parts.append((vectorizer_of(corpus), lexical))
        if words > 0.0:
            parts.append((vectorizer_of(corpus, "word"), lexical * words))
        grams = [vectorizer.transform(corpus) * weight for vectorizer, weight in parts]
        features = sparse.hstack([sparse.csr_matrix(dense), *grams]).tocsr()
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    model.fit(features, labels)
    order = [groups[int(i)][0] for i in model.classes_]
    coef = np.asarray(model.coef_, dtype=np.float32)
    bias = np.asarray(model.intercept_, dtype=np.float32)
    if len(order) == 2:
        # scikit-learn keeps one row for two classes: the second class's log-odds.
        coef = np.stack([np.zeros_like(coef[0]), coef[0]])
        bias = np.array([0.0, bias[0]], dtype=np.float32)
    width = dense.shape[1]
    lexicons: list[Lexicon] = []
    start = width
    for vectorizer, weight in parts:
        end = start + len(vectorizer.vocabulary_)
        lexicons.append(
            Lexicon(
                vectorizer.build_analyzer(),
                vectorizer.vocabulary_,
                np.asarray(vectorizer.idf_, dtype=np.float32),
                np.ascontiguousarray((coef[:, start:end] * weight).T),
                vectorizer.analyzer,
            )
        )
        start = end
    return Head(tuple(order), coef[:, :width], bias, tuple(lexicons))
