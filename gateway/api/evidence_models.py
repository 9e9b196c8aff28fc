"""Answers of `GET /admin/rollouts/{ref}/evidence`: the candidate's answers that did badly."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from gateway.quality.evidence import Evidence


class EvidenceRollout(BaseModel):
    """The rollout the evidence is about."""

    id: int
    route: str
    stable_version: int
    candidate_version: int
    stage: str
    active: bool


class ReasonOut(BaseModel):
    """One signal against the answer: `verifier:<scorer>`, `reward:<scorer>`, `feedback` or
    `error` (value None)."""

    signal: str
    value: float | None
    detail: str


class EvidenceOut(BaseModel):
    """One answer of the candidate: a served canary answer or a shadow pair's candidate side."""

    source: Literal["canary", "shadow"]
    id: int
    request_id: str
    at: datetime
    version: int | None
    status: int
    messages: list[Any] | None
    prompt: str | None
    answer: str | None
    reasons: list[ReasonOut]

    @classmethod
    def of(cls, evidence: Evidence) -> EvidenceOut:
        """The answer shape of one piece of evidence."""
        return cls.model_validate(evidence, from_attributes=True)


class EvidenceList(BaseModel):
    """A page of evidence; `next_after` is the cursor of the next page (None: no more)."""

    object: Literal["list"] = "list"
    rollout: EvidenceRollout
    data: list[EvidenceOut]
    next_after: str | None
