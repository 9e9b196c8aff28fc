"""`/v1/feedback`: users rate answers; the rating lands on the version and variant that
answered (a canary answer's rating counts for the candidate).

- `POST /v1/feedback`: `{"response_id", "thumbs" | "score" | "value", "comment", "tags"}`;
  sending again for the same response replaces the rating (the old one goes to its history).
- `GET /v1/feedback/{response_id}`: the rating of one of the caller's answers.

An id the caller did not get an answer for (unknown, expired, another tenant's) is a 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.api.auth import principal_of
from gateway.api.feedback_models import FeedbackBody, FeedbackOut
from gateway.errors import InvalidRequest, ResponseNotFound
from gateway.quality.feedback import FeedbackService

router = APIRouter(prefix="/v1", tags=["feedback"])


def _tenant(request: Request) -> str:
    principal = principal_of(request.scope)
    return principal.name if principal is not None else "-"


def _service(request: Request) -> FeedbackService:
    service: FeedbackService = request.app.state.feedback
    return service


@router.post("/feedback")
async def post_feedback(body: FeedbackBody, request: Request) -> FeedbackOut:
    """Rate one answer (again: the new rating replaces the old one)."""
    settings = request.app.state.settings
    try:
        rating = body.rating(settings.quality.max_comment_chars)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="comment") from exc
    stored = await _service(request).rate(_tenant(request), body.response_id, rating)
    return FeedbackOut.of(stored)


@router.get("/feedback/{response_id}")
async def get_feedback(response_id: str, request: Request) -> FeedbackOut:
    """The rating of one of the caller's answers."""
    if len(response_id) > 140:
        raise ResponseNotFound("no such response", param="response_id")
    return FeedbackOut.of(await _service(request).get(_tenant(request), response_id))
