"""Users' ratings of answers: checked, tied to the response that was rated, stored once.

A response is named by the answer's `id` (`chatcmpl-<request id>`, `cmpl-<request id>`) or
by the bare request id. A tenant only ever finds its own responses: another tenant's id is
as unknown as an id never answered. Rating a response again replaces the rating; the
earlier one is kept in its history.
"""

from __future__ import annotations

import asyncio

from gateway.errors import ResponseNotFound
from gateway.metrics import Metrics
from gateway.quality.responselog import ResponseLog
from gateway.registry.quality import Feedback, QualityStore, Rating

__all__ = ["Feedback", "FeedbackService", "Rating", "rating_label", "request_ids"]

# What an answer's `id` puts before the request id.
ID_PREFIXES = ("chatcmpl-", "cmpl-")


def request_ids(response_id: str) -> list[str]:
    """The request ids a response id may stand for, most likely first."""
    for prefix in ID_PREFIXES:
        if response_id.startswith(prefix) and len(response_id) > len(prefix):
            return [response_id[len(prefix) :], response_id]
    return [response_id]


def rating_label(rating: Rating) -> str:
    """The metric label of a rating (bounded: up, down, score_1..score_5, value)."""
    if "thumbs" in rating.raw:
        return str(rating.raw["thumbs"])
    if "score" in rating.raw:
        return f"score_{rating.raw['score']}"
    return "value"


class FeedbackService:
    """Stores and reads ratings for the `/v1/feedback` routes."""

    def __init__(self, store: QualityStore, responses: ResponseLog, metrics: Metrics) -> None:
        self._store = store
        self._responses = responses
        self._metrics = metrics

    async def rate(self, tenant: str, response_id: str, rating: Rating) -> Feedback:
        """Store `tenant`'s rating of one of its responses (replacing an earlier one)."""
        stored = await self._each_id(tenant, response_id, rating)
        response = stored.response
        variant = response.variant or "none"
        self._metrics.feedback.labels(response.route, variant, rating_label(rating)).inc()
        return stored

    async def get(self, tenant: str, response_id: str) -> Feedback:
        """`tenant`'s rating of one of its responses."""
        return await self._each_id(tenant, response_id, None)

    async def _each_id(self, tenant: str, response_id: str, rating: Rating | None) -> Feedback:
        ids = request_ids(response_id)
        if any(self._responses.holds(tenant, request_id) for request_id in ids):
            # Answered a moment ago: its record is still in the writer's buffer.
            await self._responses.flush()
        newer_than = self._responses.oldest_kept()
        for i, request_id in enumerate(ids):
            try:
                if rating is None:
                    return await asyncio.to_thread(
                        self._store.feedback, tenant, request_id, newer_than=newer_than
                    )
                return await asyncio.to_thread(
                    self._store.put_feedback, tenant, request_id, rating, newer_than=newer_than
                )
            except ResponseNotFound:
                if i == len(ids) - 1:
                    raise
        raise AssertionError("unreachable")
