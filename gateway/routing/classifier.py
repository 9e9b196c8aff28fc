"""Decide a request's route: rules first, then the nearest example utterances.

1. Rules, in table order: a route whose keyword (whole word or phrase, any case) or pattern
   (regex search, any case) matches the text wins outright, with confidence 1.
2. Embeddings: every route scores the text by cosine similarity to its utterances: `knn`
   averages the `k` most similar utterances, `centroid` takes the similarity to their
   normalised mean. The best route wins if it reaches its threshold and the default
   route's own utterances (when the table has any) are not nearer still; otherwise the
   request goes to the default route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.routing.embedder import Vectors
from gateway.routing.table import RULE_TEXT_CHARS, RouteSpec, RouteTable

Method = Literal["rule", "embedding", "fallback"]
# Why a request went where it went (bounded: these are metric label values).
REASONS = (
    "keyword",
    "pattern",
    "nearest",
    "low_confidence",
    "nearest_default",
    "no_text",
    "overloaded",
    "unavailable",
    "not_allowed",
)


@dataclass(frozen=True)
class Decision:
    """Where one text goes, and why."""

    route: str
    # The `model` value the route serves; None for the default route (the base model).
    adapter: str | None
    # 1.0 for a rule; else the best adapter route's similarity (what won, or fell short).
    confidence: float
    method: Method
    reason: str
    # Every route's similarity (the default's too when it has utterances); empty for rules.
    scores: Mapping[str, float] = field(default_factory=dict)
    # The route the classifier chose before a fallback overrode it (e.g. `not_allowed`).
    chosen: str | None = None

    def to_fallback(self, default: str, reason: str) -> Decision:
        """The same evidence, sent to the default route for `reason`."""
        return Decision(
            default, None, self.confidence, "fallback", reason, self.scores, chosen=self.route
        )


@dataclass(frozen=True)
class _Rules:
    route: RouteSpec
    keywords: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]


def _keyword_regex(keywords: list[str]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    alternatives = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


class RouteIndex:
    """A table with its utterances embedded: answers `decide(text, vector)` in microseconds."""

    def __init__(self, table: RouteTable, vectors: Mapping[str, Vectors]) -> None:
        self.table = table
        self.default = table.default.name
        self._rules = [
            _Rules(
                route,
                _keyword_regex(route.keywords),
                tuple(re.compile(p, re.IGNORECASE) for p in route.patterns),
            )
            for route in table.routes
        ]
        self._names = [route.name for route in table.routes]
        self._thresholds = np.array([table.threshold_of(r) for r in table.routes], np.float32)
        self._adapters = {route.name: route.adapter for route in table.routes}
        self._matrices = [self._prepare(vectors[name]) for name in self._names]
        default = vectors.get(self.default)
        self._default = self._prepare(default) if default is not None and len(default) else None

    @classmethod
    async def build(
        cls, table: RouteTable, embed_many: Callable[[list[str]], Awaitable[Vectors]]
    ) -> RouteIndex:
        """Embed every utterance of `table` in one call and index them."""
        groups = [(r.name, r.utterances) for r in table.routes]
        if table.default.utterances:
            groups.append((table.default.name, table.default.utterances))
        texts = [text for _, utterances in groups for text in utterances]
        matrix = await embed_many(texts)
        vectors: dict[str, Vectors] = {}
        start = 0
        for name, utterances in groups:
            vectors[name] = matrix[start : start + len(utterances)]
            start += len(utterances)
        return cls(table, vectors)

    def _prepare(self, matrix: Vectors) -> Vectors:
        if self.table.method == "centroid":
            centre = matrix.mean(axis=0, keepdims=True)
            unit: Vectors = (centre / max(float(np.linalg.norm(centre)), 1e-12)).astype(np.float32)
            return unit
        return matrix

    def _score(self, matrix: Vectors, vector: Vectors) -> float:
        similarities = matrix @ vector
        k = min(self.table.k, len(similarities))
        if k == len(similarities):
            return float(similarities.mean())
        return float(np.partition(similarities, -k)[-k:].mean())

    def match_rules(self, text: str) -> Decision | None:
        """The first route whose rules match `text`, as a decision; None when none does."""
        head = text[:RULE_TEXT_CHARS]
        for rules in self._rules:
            name = rules.route.name
            if rules.keywords is not None and rules.keywords.search(head):
                return Decision(name, rules.route.adapter, 1.0, "rule", "keyword")
            if any(pattern.search(head) for pattern in rules.patterns):
                return Decision(name, rules.route.adapter, 1.0, "rule", "pattern")
        return None

    def scores(self, vector: Vectors) -> dict[str, float]:
        """Every route's similarity to `vector` (and the default's, if it has utterances)."""
        scores = {
            name: self._score(matrix, vector)
            for name, matrix in zip(self._names, self._matrices, strict=True)
        }
        if self._default is not None:
            scores[self.default] = self._score(self._default, vector)
        return scores

    def decide(self, vector: Vectors) -> Decision:
        """The route for an embedded text (rules already checked)."""
        scores = self.scores(vector)
        values = np.array([scores[name] for name in self._names], np.float32)
        best = int(values.argmax())
        name, score = self._names[best], float(values[best])
        chosen = Decision(name, self._adapters[name], score, "embedding", "nearest", scores)
        if self._default is not None and scores[self.default] > score:
            return chosen.to_fallback(self.default, "nearest_default")
        if score < float(self._thresholds[best]):
            return chosen.to_fallback(self.default, "low_confidence")
        return chosen

    def fallback(self, reason: str) -> Decision:
        """The default route, with no evidence (nothing to classify, or no capacity)."""
        return Decision(self.default, None, 0.0, "fallback", reason)

    def summary(self) -> dict[str, Any]:
        """What the table routes where (for status output)."""
        return {
            "default": self.default,
            "method": self.table.method,
            "k": self.table.k,
            "routes": [
                {
                    "name": r.name,
                    "adapter": r.adapter,
                    "threshold": self.table.threshold_of(r),
                    "utterances": len(r.utterances),
                    "keywords": len(r.keywords),
                    "patterns": len(r.patterns),
                }
                for r in self.table.routes
            ],
            "default_utterances": len(self.table.default.utterances),
        }


def request_text(payload: Mapping[str, Any]) -> str:
    """The text a request is routed by: the last user message, or the completion prompt."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt.strip()
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt).strip()
    # Token-id prompts carry no text to classify.
    return ""


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        return "\n".join(p for p in parts if isinstance(p, str)).strip()
    return ""
