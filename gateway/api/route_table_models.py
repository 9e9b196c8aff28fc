"""Bodies and answers of the route-table admin API (`/admin/routes`, `/admin/classify`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.routing.head import FOLLOW_UP
from gateway.routing.router import ActiveTable, Explanation


class RouteTableOut(BaseModel):
    """A route table: where it came from, what it says."""

    id: int
    sha256: str
    created_by: str
    created_at: str
    stored: bool
    summary: dict[str, Any]
    source: str


class ClassifyBody(BaseModel):
    """One of: `text`, chat `messages`, or a completion `prompt`."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, max_length=100_000)
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ClassifyBody:
        given = [f for f in ("text", "messages", "prompt") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `text`, `messages` or `prompt`")
        return self


class RuleOut(BaseModel):
    """The keyword or pattern that matched, and why it did not count if it did not."""

    route: str
    kind: str
    matched: str
    vetoed: str | None


class ScoreOut(BaseModel):
    """One route's score."""

    route: str
    score: float


class ClassifyOut(BaseModel):
    """A decision and its evidence."""

    text: str
    route: str
    adapter: str | None
    confidence: float
    method: str
    reason: str
    explanation: str
    threshold: float | None
    # The best routes (the default's included) by the scores that decided.
    top: list[ScoreOut]
    scores: dict[str, float]
    rule: RuleOut | None
    # A follow-up: the earlier user turns it was read with, and the conversation's scores.
    earlier: list[str]
    context_scores: dict[str, float] | None
    table: int

    @classmethod
    def of(cls, explanation: Explanation) -> ClassifyOut:
        """From the router's explanation of a decision."""
        decision = explanation.decision
        return cls(
            text=explanation.text,
            route=decision.route,
            adapter=decision.adapter,
            confidence=round(decision.confidence, 6),
            method=decision.method,
            reason=decision.reason,
            explanation=decision.explain(explanation.threshold),
            threshold=explanation.threshold,
            top=[
                ScoreOut(route=name, score=round(value, 6))
                for name, value in (decision.top() or _ranked(explanation.scores))
            ],
            scores=_rounded(explanation.scores),
            rule=None if decision.rule is None else RuleOut(**asdict(decision.rule)),
            earlier=list(explanation.earlier),
            context_scores=(
                None if decision.context_scores is None else _rounded(decision.context_scores)
            ),
            table=explanation.table,
        )


def _rounded(scores: Mapping[str, float]) -> dict[str, float]:
    return {name: round(value, 6) for name, value in scores.items()}


def _ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    ranked = sorted(((k, v) for k, v in scores.items() if k != FOLLOW_UP), key=lambda kv: -kv[1])
    return ranked[:3]


def table_out(active: ActiveTable, *, stored: bool) -> RouteTableOut:
    """A table as the API shows it (`stored`: it is the one in use, not a dry run)."""
    return RouteTableOut(
        id=active.id,
        sha256=active.sha256,
        created_by=active.created_by,
        created_at=active.created_at,
        stored=stored,
        summary=active.index.summary(),
        source=active.source,
    )
