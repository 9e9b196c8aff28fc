"""Contamination: evaluation rows that overlap the training data, found and set aside.

A row is contaminated when its prompt is a training prompt (exactly, after folding case and
white space), or when its prompt and reference together share a run of `n` words with a
training row's (the n-gram check of the GPT-3 and Llama reports, on words). The system
prompt is left out of the n-grams: a task's rows share it. Contaminated rows are reported
and left out of every metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from adapters.train import Example

_WORD = re.compile(r"\w+", re.UNICODE)


def fold(text: str) -> str:
    """Case and white space folded away."""
    return " ".join(text.lower().split())


def _words(example: Example) -> list[str]:
    # The system prompt is left out: a task's rows share it, so it would match every row.
    return _WORD.findall(f"{example.prompt} {example.response}".lower())


def _grams(words: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class Overlap:
    """One evaluation row found in the training data, and how."""

    index: int
    kind: str  # "exact" or "ngram"
    detail: str


class ContaminationIndex:
    """The training data's prompts and word n-grams, to test evaluation rows against."""

    def __init__(self, training: Sequence[Example], n: int) -> None:
        self.n = n
        self._prompts = {fold(ex.prompt) for ex in training}
        self._grams: set[tuple[str, ...]] = set()
        for example in training:
            self._grams.update(_grams(_words(example), n))

    def find(self, example: Example) -> tuple[str, str] | None:
        """("exact" | "ngram", detail) when `example` overlaps the training data."""
        if fold(example.prompt) in self._prompts:
            return "exact", "the prompt is a training prompt"
        for gram in _grams(_words(example), self.n):
            if gram in self._grams:
                return "ngram", f"shares {self.n} words with training data: {' '.join(gram)!r}"
        return None

    def split(self, rows: Sequence[Example]) -> tuple[list[Example], list[Overlap]]:
        """(clean rows, the overlaps found)."""
        clean: list[Example] = []
        found: list[Overlap] = []
        for index, row in enumerate(rows):
            hit = self.find(row)
            if hit is None:
                clean.append(row)
            else:
                found.append(Overlap(index, *hit))
        return clean, found
