"""Bodies and answers of the webhook admin API (`/admin/hooks`). Bodies refuse unknown fields.

A subscription's secret is in one answer only, the one that created it; every other shows
its fingerprint (the first hex digits of its sha256), never the secret itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from gateway.api.adapter_models import AdminBody
from gateway.hooks.delivery import Report
from gateway.hooks.outbox import MAX_DESCRIPTION, MAX_EVENTS, MessageView
from gateway.hooks.signing import fingerprint

MessageStatus = Literal["pending", "delivered", "dead"]


class HookBody(AdminBody):
    """Subscribe a URL to events (none listed: every event), optionally with its own secret."""

    # Longer URLs are refused by the URL check, with the reason (`invalid_hook_url`).
    url: str = Field(min_length=1, max_length=8192)
    events: list[str] = Field(default_factory=list, max_length=MAX_EVENTS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    # `whsec_` + base64 of 24 to 64 random bytes; None: the gateway makes one.
    secret: str | None = Field(default=None, min_length=1, max_length=256)


class HookOut(BaseModel):
    """A subscription as every answer but its creation shows it."""

    id: int
    url: str
    events: list[str]
    description: str
    active: bool
    created_by: str
    created_at: datetime
    # Read from the row's `secret`, kept only as its fingerprint (None: removed, erased).
    secret_fingerprint: str | None = Field(validation_alias="secret")

    @field_validator("secret_fingerprint", mode="before")
    @classmethod
    def _only_fingerprint(cls, secret: object) -> str | None:
        return fingerprint(secret) if isinstance(secret, str) else None

    @classmethod
    def of(cls, row: object) -> HookOut:
        """From a subscription row."""
        return cls.model_validate(row, from_attributes=True)


class HookCreated(HookOut):
    """A new subscription with its secret: shown here and never again."""

    secret: str


class HookList(BaseModel):
    object: Literal["list"] = "list"
    data: list[HookOut]


class AttemptOut(BaseModel):
    """One delivery attempt: the receiver's status (None: no answer), time taken, error."""

    at: datetime
    status: int | None
    latency_ms: float
    error: str | None


class MessageOut(BaseModel):
    """A message to a subscriber, where its delivery is, and every attempt so far."""

    id: str
    event: str
    status: str
    created_at: datetime
    next_attempt_at: datetime | None
    deadline_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    body: str
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, view: MessageView) -> MessageOut:
        """From a message and its attempts."""
        row = view.message
        return cls(
            id=row.message_id,
            event=row.event,
            status=row.status,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
            deadline_at=row.deadline_at,
            delivered_at=row.delivered_at,
            last_status=row.last_status,
            last_error=row.last_error,
            body=row.body,
            attempts=[AttemptOut.model_validate(a, from_attributes=True) for a in view.attempts],
        )


class MessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MessageOut]


class HookTestOut(BaseModel):
    """What the receiver made of a test message (`outcome`: delivered, retry or dead)."""

    message_id: str
    delivered: bool
    outcome: str
    status: int | None
    latency_ms: float
    error: str | None

    @classmethod
    def of(cls, report: Report) -> HookTestOut:
        attempt = report.attempt
        return cls(
            message_id=report.message_id,
            delivered=attempt.ok,
            outcome=report.outcome.value,
            status=attempt.status,
            latency_ms=round(attempt.latency_ms, 3),
            error=attempt.error,
        )
