"""Bodies and answers of the route-table admin API (`/admin/routes`, `/admin/classify`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class ClassifyOut(BaseModel):
    """A decision and its evidence."""

    text: str
    route: str
    adapter: str | None
    confidence: float
    method: str
    reason: str
    threshold: float | None
    scores: dict[str, float]
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
            threshold=explanation.threshold,
            scores={name: round(value, 6) for name, value in explanation.scores.items()},
            table=explanation.table,
        )


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
