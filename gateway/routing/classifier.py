"""Decide a request's route: rules, then the embeddings, then the conversation.

1. Rules, in table order: the first route whose keyword (whole word or phrase, any case) or
   pattern (regex search, any case) matches the text, unless one of the route's negative
   patterns matches too, wins, provided its score (below) reaches the table's `rule_floor`
   when the table sets one. Rules are exact, not clever: the floor lets the embeddings veto a
   keyword used in another sense.
2. Embeddings: every route scores the text. `head` tables: the learned head's probability
   (see `head.py`); `knn`: the mean cosine similarity of the route's `k` most similar
   utterances; `centroid`: the similarity to their normalised mean. The best route wins if it
   reaches its threshold and the default route does not score higher still. A route one of
   whose `negatives` matches the text cannot win (by a rule or by its score).
3. Context (`head` tables): when no route won, the chat has earlier user turns and the last
   message alone is not clearly the default's (its probability is under `context.switch`)
   and does not announce a new topic ("unrelated, but ...": `context.breaks`), the
   conversation (the last message plus the earlier turns, each turn back weighing less)
   is scored the same way, with the follow-up class set aside: the best route there wins if
   it reaches its threshold (reason `context`).
4. Otherwise the default route: `nearest_default` or `low_confidence`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from gateway.routing.batcher import Overloaded
from gateway.routing.conversation import Conversation, context_vector, request_text
from gateway.routing.embedder import Vectors
from gateway.routing.head import (
    BACKGROUND_FILE,
    FOLLOW_UP,
    FOLLOW_UP_FILE,
    Head,
    packaged_texts,
    train_head,
)
from gateway.routing.headcache import HeadCache, head_key
from gateway.routing.table import RULE_TEXT_CHARS, RouteSpec, RouteTable

__all__ = [
    "REASONS",
    "Decision",
    "Evidence",
    "RouteIndex",
    "RuleMatch",
    "classify",
    "groups_of",
    "request_text",
]

Method = Literal["rule", "embedding", "fallback"]
# Why a request went where it went (bounded: these are metric label values).
REASONS = (
    "keyword",
    "pattern",
    "nearest",
    "context",
    "low_confidence",
    "nearest_default",
    "no_text",
    "overloaded",
    "unavailable",
    "not_allowed",
)


@dataclass(frozen=True)
class RuleMatch:
    """A keyword or pattern that matched, and why it did not count if it did not."""

    route: str
    kind: Literal["keyword", "pattern"]
    matched: str
    # None: it counts; else why not (a negative pattern matched, or the score was too low).
    vetoed: str | None = None

    def describe(self) -> str:
        """One line, e.g. `keyword 'treasure map'` or `pattern '...' (vetoed: ...)`."""
        line = f"{self.kind} '{self.matched}' of {self.route}"
        return line if self.vetoed is None else f"{line} (vetoed: {self.vetoed})"


@dataclass(frozen=True)
class Decision:
    """Where one text goes, and why."""

    route: str
    # The `model` value the route serves; None for the default route (the base model).
    adapter: str | None
    # The chosen (or nearly chosen) route's score: a probability for `head` tables, a
    # cosine similarity for `knn` and `centroid`; 1.0 for a rule with nothing to check it.
    confidence: float
    method: Method
    reason: str
    # Every class's score for the last message; empty when a rule decided alone.
    scores: Mapping[str, float] = field(default_factory=dict)
    # The route the classifier chose before a fallback overrode it (e.g. `not_allowed`).
    chosen: str | None = None
    # The rule that matched, whether or not it counted.
    rule: RuleMatch | None = None
    # The conversation's scores, when the last message was read as a follow-up.
    context_scores: Mapping[str, float] | None = None
    # Routes a negative pattern of theirs ruled out.
    excluded: tuple[str, ...] = ()

    def to_fallback(self, default: str, reason: str) -> Decision:
        """The same evidence, sent to the default route for `reason`."""
        return replace(
            self, route=default, adapter=None, method="fallback", reason=reason, chosen=self.route
        )

    def explain(self, threshold: float | None) -> str:
        """Why, in one sentence (`threshold`: the chosen or nearly chosen route's)."""
        score = f"{self.confidence:.3f}"
        limit = "" if threshold is None else f" (threshold {threshold:.2f})"
        best = self.chosen or self.route
        text = {
            "keyword": f"{self.rule.describe() if self.rule else 'a keyword'} matched",
            "pattern": f"{self.rule.describe() if self.rule else 'a pattern'} matched",
            "nearest": f"{self.route} scores {score}{limit}",
            "context": f"a follow-up: the conversation scores {best} {score}{limit}",
            "low_confidence": f"the best route, {best}, scores only {score}{limit}",
            "nearest_default": f"the default scores more than any route (best: {best} {score})",
            "no_text": "no text to classify",
            "overloaded": "the classifier was busy; the base model serves at once",
            "unavailable": f"{best}'s adapter is not servable now",
            "not_allowed": f"the caller's key may not use {best}",
        }.get(self.reason, self.reason)
        if self.method == "rule" and self.scores:
            text += f"; {self.route} scores {score}"
        if self.rule is not None and self.rule.vetoed is not None:
            text += f"; {self.rule.describe()}"
        if self.excluded:
            text += f"; ruled out by a negative pattern: {', '.join(self.excluded)}"
        return text

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The `n` best-scoring routes (default included) of the scores that decided."""
        scores = self.context_scores if self.reason == "context" else self.scores
        ranked = sorted(
            ((k, v) for k, v in (scores or {}).items() if k != FOLLOW_UP), key=lambda kv: -kv[1]
        )
        return ranked[:n]


@dataclass(frozen=True)
class Evidence:
    """What the index saw in a text: every class's score, and the rule that matched."""

    scores: Mapping[str, float]
    rule: RuleMatch | None = None
    context_scores: Mapping[str, float] | None = None
    # Routes a negative pattern of theirs rules out for this text.
    excluded: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Rules:
    route: RouteSpec
    keywords: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]
    negatives: tuple[re.Pattern[str], ...]


def _keyword_regex(keywords: list[str]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    alternatives = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def groups_of(table: RouteTable) -> list[tuple[str, list[str]]]:
    """The texts each class is learned from (`head`) or compared with (`knn`, `centroid`)."""
    groups = [(r.name, r.examples()) for r in table.routes]
    default = list(table.default.utterances)
    if table.method == "head" and table.head.background == "builtin":
        default += packaged_texts(BACKGROUND_FILE)
    if default:
        groups.append((table.default.name, default))
    if table.context.turns:
        groups.append((FOLLOW_UP, list(packaged_texts(FOLLOW_UP_FILE))))
    return groups


class RouteIndex:
    """A table with its examples embedded: `evidence` and `conclude` in microseconds."""

    def __init__(
        self, table: RouteTable, vectors: Mapping[str, Vectors], head: Head | None = None
    ) -> None:
        self.table = table
        self.default = table.default.name
        self.context_turns = table.context.turns
        self.context_weight = table.context.weight
        self._breaks = tuple(re.compile(p, re.IGNORECASE) for p in table.context.topic_breaks())
        self._rules = [
            _Rules(
                route,
                _keyword_regex(route.keywords),
                tuple(re.compile(p, re.IGNORECASE) for p in route.patterns),
                tuple(re.compile(p, re.IGNORECASE) for p in route.negatives),
            )
            for route in table.routes
        ]
        self._names = [route.name for route in table.routes]
        self._thresholds = {r.name: table.threshold_of(r) for r in table.routes}
        self._adapters = {route.name: route.adapter for route in table.routes}
        self._head = head
        self._matrices = {
            name: self._prepare(matrix) for name, matrix in vectors.items() if len(matrix)
        }

    @classmethod
    async def build(
        cls,
        table: RouteTable,
        embed_many: Callable[[list[str]], Awaitable[Vectors]],
        train: Callable[[Callable[[], Head]], Awaitable[Head]] | None = None,
        heads: HeadCache | None = None,
    ) -> RouteIndex:
        """Embed every example of `table` in one call and index them (and, for `head`
        tables, train the head: through `train`, e.g. on a worker thread, if given; a head
        trained before on the same examples comes from `heads`)."""
        groups = groups_of(table)
        texts = [text for _, examples in groups for text in examples]
        matrix = await embed_many(texts)
        vectors: dict[str, Vectors] = {}
        start = 0
        for name, examples in groups:
            vectors[name] = matrix[start : start + len(examples)]
            start += len(examples)
        if table.method != "head":
            return cls(table, vectors)
        settings = table.head

        def fit() -> Head:
            key = ""
            if heads is not None:
                trained_on = [(name, examples, vectors[name]) for name, examples in groups]
                key = head_key(
                    trained_on, c=settings.c, lexical=settings.lexical, words=settings.words
                )
                stored = heads.get(key)
                if stored is not None:
                    return stored
            head = train_head(
                list(vectors.items()),
                c=settings.c,
                texts=[examples for _, examples in groups],
                lexical=settings.lexical,
                words=settings.words,
            )
            if heads is not None:
                heads.put(key, head)
            return head

        head = fit() if train is None else await train(fit)
        return cls(table, {}, head)

    def _prepare(self, matrix: Vectors) -> Vectors:
        if self.table.method == "centroid":
            centre = matrix.mean(axis=0, keepdims=True)
            unit: Vectors = (centre / max(float(np.linalg.norm(centre)), 1e-12)).astype(np.float32)
            return unit
        return matrix

    def _similarity(self, matrix: Vectors, vector: Vectors) -> float:
        similarities = matrix @ vector
        k = min(self.table.k, len(similarities))
        if k == len(similarities):
            return float(similarities.mean())
        return float(np.partition(similarities, -k)[-k:].mean())

    @property
    def needs_embedding_for_rules(self) -> bool:
        """Whether a matching rule must be checked against the scores (`rule_floor`)."""
        return self.table.rule_floor is not None

    def match_rules(self, text: str) -> RuleMatch | None:
        """The first route whose keyword or pattern matches `text` and no negative does;
        else the first match a negative vetoed (for the explanation); else None."""
        head = text[:RULE_TEXT_CHARS]
        vetoed: RuleMatch | None = None
        for rules in self._rules:
            match = _first_match(rules, head)
            if match is None:
                continue
            negative = next((n for n in rules.negatives if n.search(head)), None)
            if negative is None:
                return match
            vetoed = vetoed or replace(match, vetoed=f"negative '{negative.pattern}' matched")
        return vetoed

    def scores(self, vector: Vectors, text: str = "") -> dict[str, float]:
        """Every class's score for `vector`: each route's, the default's (a `head` table's
        default always; another table's when it has utterances) and, when the table reads
        context, the follow-up class's."""
        if self._head is not None:
            return self._head.probabilities(vector, text)
        return {name: self._similarity(m, vector) for name, m in self._matrices.items()}

    def evidence(
        self, vector: Vectors | None, rule: RuleMatch | None = None, *, text: str = ""
    ) -> Evidence:
        """The evidence of one text (no vector: a rule decides alone)."""
        scores = {} if vector is None else self.scores(vector, text)
        return Evidence(scores, rule, excluded=self.negated(text))

    def negated(self, text: str) -> frozenset[str]:
        """The routes one of whose negative patterns matches `text`."""
        head = text[:RULE_TEXT_CHARS]
        return frozenset(
            r.route.name for r in self._rules if any(n.search(head) for n in r.negatives)
        )

    def is_follow_up(self, scores: Mapping[str, float]) -> bool:
        """Whether the topic may hold: the table reads context and the last message is not
        clearly the default's."""
        if not self.context_turns or self.default not in scores:
            return False
        return scores[self.default] < self.table.context.switch

    def earlier_to_read(
        self, evidence: Evidence, earlier: Sequence[str], text: str
    ) -> tuple[str, ...]:
        """The earlier user turns a text may be read with (oldest first): none when the
        table reads no context, the text reads as a change of topic, or it says so ("ok,
        unrelated: ..."; `context.breaks`). (They count only when the text alone reaches no
        route: `conclude`.)"""
        if not earlier or not self.is_follow_up(evidence.scores):
            return ()
        if self.breaks_topic(text):
            return ()
        return tuple(earlier[-self.context_turns :])

    def breaks_topic(self, text: str) -> bool:
        """Whether `text` announces a change of topic."""
        head = text[:RULE_TEXT_CHARS]
        return any(pattern.search(head) for pattern in self._breaks)

    def in_context(
        self,
        evidence: Evidence,
        vector: Vectors,
        earlier: Sequence[Vectors],
        texts: Sequence[str] = (),
    ) -> Evidence:
        """The evidence with the conversation's scores (`earlier`: the earlier turns'
        vectors; `texts`: every turn's text, the last message's last)."""
        combined = context_vector(vector, list(earlier), self.context_weight)
        return replace(evidence, context_scores=self.context_scores(combined, "\n".join(texts)))

    def context_scores(self, vector: Vectors, text: str = "") -> dict[str, float]:
        """A conversation's scores: what topic it is on, the follow-up class set aside."""
        scores = self.scores(vector, text)
        scores.pop(FOLLOW_UP, None)
        rest = max(sum(scores.values()), 1e-30)
        return {name: value / rest for name, value in scores.items()}

    def conclude(self, evidence: Evidence, threshold: float | None = None) -> Decision:
        """The decision the evidence supports (`threshold`: one for every route, instead of
        the table's; for sweeps)."""
        scores = evidence.scores
        rule = evidence.rule
        if rule is not None and rule.vetoed is None:
            floor = self.table.rule_floor
            score = scores.get(rule.route, 1.0)
            if floor is None or score >= floor:
                adapter = self._adapters[rule.route]
                return Decision(rule.route, adapter, score, "rule", rule.kind, scores, rule=rule)
            rule = replace(rule, vetoed=f"score {score:.3f} under the rule floor {floor}")
        if not scores:
            # Nothing but a vetoed rule to go by.
            return replace(self.fallback("low_confidence"), rule=rule)
        excluded = evidence.excluded
        chosen = self._best(scores, threshold, rule, excluded)
        if chosen.method != "fallback" or evidence.context_scores is None:
            return chosen
        in_context = self._best(evidence.context_scores, threshold, rule, excluded)
        if in_context.method == "fallback":
            return replace(chosen, context_scores=evidence.context_scores)
        return replace(
            in_context, reason="context", scores=scores, context_scores=evidence.context_scores
        )

    def _best(
        self,
        scores: Mapping[str, float],
        threshold: float | None,
        rule: RuleMatch | None,
        excluded: frozenset[str] = frozenset(),
    ) -> Decision:
        names = [n for n in self._names if n not in excluded]
        ruled_out = tuple(n for n in self._names if n in excluded)
        if not names:
            return replace(self.fallback("low_confidence"), rule=rule, excluded=ruled_out)
        name = max(names, key=lambda n: scores[n])
        score = scores[name]
        chosen = Decision(
            name,
            self._adapters[name],
            score,
            "embedding",
            "nearest",
            scores,
            rule=rule,
            excluded=ruled_out,
        )
        if scores.get(self.default, float("-inf")) > score:
            return chosen.to_fallback(self.default, "nearest_default")
        limit = self._thresholds[name] if threshold is None else threshold
        if score < limit:
            return chosen.to_fallback(self.default, "low_confidence")
        return chosen

    def decide(self, vector: Vectors) -> Decision:
        """The route for an embedded text (rules already checked)."""
        return self.conclude(self.evidence(vector))

    def fallback(self, reason: str) -> Decision:
        """The default route, with no evidence (nothing to classify, or no capacity)."""
        return Decision(self.default, None, 0.0, "fallback", reason)

    def summary(self) -> dict[str, Any]:
        """What the table routes where (for status output)."""
        table = self.table
        return {
            "default": self.default,
            "method": table.method,
            "k": table.k,
            "rule_floor": table.rule_floor,
            "context_turns": table.context.turns,
            "routes": [
                {
                    "name": r.name,
                    "adapter": r.adapter,
                    "description": r.description,
                    "threshold": table.threshold_of(r),
                    "utterances": len(r.utterances),
                    "keywords": len(r.keywords),
                    "patterns": len(r.patterns),
                    "negatives": len(r.negatives),
                }
                for r in table.routes
            ],
            "default_utterances": len(table.default.utterances),
        }


def _first_match(rules: _Rules, text: str) -> RuleMatch | None:
    name = rules.route.name
    if rules.keywords is not None:
        found = rules.keywords.search(text)
        if found:
            return RuleMatch(name, "keyword", found.group(0).lower())
    for pattern in rules.patterns:
        if pattern.search(text):
            return RuleMatch(name, "pattern", pattern.pattern)
    return None


VectorsOf = Callable[[list[str]], Awaitable[list[Vectors]]]


async def classify(
    index: RouteIndex, conversation: Conversation, vectors_of: VectorsOf
) -> Decision:
    """One request's whole decision: rules, the last message's scores, then the conversation
    for a follow-up. `vectors_of` embeds texts; when it raises `Overloaded` the request goes
    to the default route at once (or, for the earlier turns, keeps the last message's
    decision)."""
    text = conversation.text
    if not text:
        return index.fallback("no_text")
    rule = index.match_rules(text)
    if rule is not None and rule.vetoed is None and not index.needs_embedding_for_rules:
        return index.conclude(Evidence({}, rule))
    try:
        vector = (await vectors_of([text]))[0]
    except Overloaded:
        return index.fallback("overloaded")
    evidence = index.evidence(vector, rule, text=text)
    decision = index.conclude(evidence)
    earlier = index.earlier_to_read(evidence, conversation.earlier, text)
    # The earlier turns matter only when the last message alone reaches no route.
    if earlier and decision.method == "fallback":
        with contextlib.suppress(Overloaded):
            before = await vectors_of(list(earlier))
            decision = index.conclude(index.in_context(evidence, vector, before, (*earlier, text)))
    return decision
