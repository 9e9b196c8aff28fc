"""Bodies of `/v1/feedback`: one rating of one answer, and the stored rating."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from gateway.quality.feedback import Feedback, Rating

# The answer's `id` or its request id (the characters request ids may have).
RESPONSE_ID = r"^[A-Za-z0-9._:/+=-]{1,140}$"
MAX_TAGS = 16
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]


class FeedbackBody(BaseModel):
    """A rating: exactly one of `thumbs`, `score` or `value`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    response_id: str = Field(pattern=RESPONSE_ID)
    thumbs: Literal["up", "down"] | None = None
    score: int | None = Field(default=None, ge=1, le=5, strict=True)
    value: float | None = Field(default=None, ge=0.0, le=1.0)
    comment: str | None = Field(default=None, max_length=65_536)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)

    @model_validator(mode="after")
    def _one_rating(self) -> FeedbackBody:
        given = [f for f in ("thumbs", "score", "value") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one rating: `thumbs` (up or down), `score` (1 to 5) or "
                f"`value` (0 to 1); got {', '.join(given) or 'none'}"
            )
        return self

    def rating(self, max_comment_chars: int) -> Rating:
        """The rating on the 0 (bad) to 1 (good) scale."""
        if self.comment is not None and len(self.comment) > max_comment_chars:
            raise ValueError(f"comment: at most {max_comment_chars} characters")
        if self.thumbs is not None:
            raw: dict[str, Any] = {"thumbs": self.thumbs}
            value = 1.0 if self.thumbs == "up" else 0.0
        elif self.score is not None:
            raw, value = {"score": self.score}, (self.score - 1) / 4
        else:
            assert self.value is not None
            raw, value = {"value": self.value}, self.value
        return Rating(raw, value, self.comment, list(dict.fromkeys(self.tags)))


class FeedbackOut(BaseModel):
    """A stored rating, with the answer it rates."""

    response_id: str
    created: bool
    rating: dict[str, Any]
    value: float
    comment: str | None
    tags: list[str]
    history: list[dict[str, Any]]
    route: str
    version: int | None
    variant: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, stored: Feedback) -> FeedbackOut:
        row, response = stored.feedback, stored.response
        return cls(
            response_id=response.request_id,
            created=stored.created,
            rating=row.rating,
            value=row.value,
            comment=row.comment,
            tags=row.tags,
            history=row.history,
            route=response.route,
            version=response.version,
            variant=response.variant,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )
