"""A rollout's evidence against its candidate, with the texts to learn from.

The pieces come in one order: the canary answers by response id, then the shadow pairs by
pair id. A cursor (`canary:<id>`, `shadow:<id>`) is the last piece a page returned; the next
page starts after it, so paging returns every piece once. Pieces that turn into evidence
later (a late score or rating of an answer a page has passed) are not seen by a pager past
them; after a rollout has ended and its scorers have finished, the order no longer changes.

A canary answer has the texts the response log kept (`keep_text`): its prompt as text (chat
messages as `role: content` lines), no messages, and its answer. A shadow pair keeps the
whole request: its chat messages as sent, the prompt as text, and the candidate's answer.
Missing texts are None: the piece is still returned, so a caller can count what it lacks.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from gateway.errors import InvalidRequest
from gateway.quality.records import prompt_text, text_of
from gateway.quality.responselog import ResponseLog
from gateway.registry.evidence import CanaryEvidence, EvidenceStore, Reason, ShadowEvidence

__all__ = ["SOURCES", "Cursor", "Evidence", "EvidencePage", "EvidenceService", "Reason", "Source"]

Source = Literal["canary", "shadow"]
# The order pieces come in.
SOURCES: Final[tuple[Source, ...]] = ("canary", "shadow")
_CURSOR = re.compile(r"(canary|shadow):([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the evidence's order: after this source's piece `id`."""

    source: Source
    id: int

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor as `str` wrote it (InvalidRequest otherwise)."""
        found = _CURSOR.fullmatch(text)
        if found is None:
            raise InvalidRequest(
                f"after: {text[:40]!r} is not a cursor (canary:<id> or shadow:<id>)",
                param="after",
            )
        source: Source = "canary" if found.group(1) == "canary" else "shadow"
        return cls(source, int(found.group(2)))

    def __str__(self) -> str:
        return f"{self.source}:{self.id}"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One answer of the candidate that did badly, with its texts and why."""

    source: Source
    # The response record's id, or the shadow pair's.
    id: int
    request_id: str
    at: datetime
    version: int | None
    status: int
    messages: list[Any] | None
    prompt: str | None
    answer: str | None
    reasons: list[Reason]


@dataclass(frozen=True, slots=True)
class EvidencePage:
    """A page of evidence and the cursor of the next (None: there is no more)."""

    data: list[Evidence]
    next_after: str | None


class EvidenceService:
    """Pages through a rollout's evidence against its candidate."""

    def __init__(self, store: EvidenceStore, responses: ResponseLog) -> None:
        self._store = store
        self._responses = responses

    async def page(
        self,
        rollout_id: int,
        *,
        sources: Collection[Source],
        reward_below: float | None,
        limit: int,
        after: Cursor | None,
    ) -> EvidencePage:
        """Up to `limit` pieces of `sources`, after `after` (from the start when None)."""
        # Answers of a moment ago are still in the writer's buffer.
        await self._responses.flush()
        return await asyncio.to_thread(self._page, rollout_id, sources, reward_below, limit, after)

    def _page(
        self,
        rollout_id: int,
        sources: Collection[Source],
        reward_below: float | None,
        limit: int,
        after: Cursor | None,
    ) -> EvidencePage:
        found: list[Evidence] = []
        # One piece more than asked for says whether there is a next page.
        wanted = limit + 1
        for index, source in enumerate(SOURCES):
            if after is not None and index < SOURCES.index(after.source):
                continue  # paged past already
            if source not in sources or len(found) >= wanted:
                continue
            start = after.id if after is not None and after.source == source else 0
            room = wanted - len(found)
            if source == "canary":
                rows = self._store.canary(
                    rollout_id, after=start, limit=room, reward_below=reward_below
                )
                found += [_canary(row) for row in rows]
            else:
                pairs = self._store.shadow(
                    rollout_id, after=start, limit=room, reward_below=reward_below
                )
                found += [_shadow(pair) for pair in pairs]
        data = found[:limit]
        more = len(found) > limit
        return EvidencePage(data, str(Cursor(data[-1].source, data[-1].id)) if more else None)


def _canary(found: CanaryEvidence) -> Evidence:
    row = found.response
    return Evidence(
        source="canary",
        id=row.id,
        request_id=row.request_id,
        at=row.at,
        version=row.version,
        status=row.status,
        messages=None,
        prompt=row.prompt_text,
        answer=row.answer_text,
        reasons=found.reasons,
    )


def _shadow(found: ShadowEvidence) -> Evidence:
    pair = found.pair
    request = pair.request if isinstance(pair.request, dict) else None
    messages = request.get("messages") if request is not None else None
    return Evidence(
        source="shadow",
        id=pair.id,
        request_id=pair.request_id,
        at=pair.created_at,
        version=pair.shadow_version,
        status=pair.shadow_status,
        messages=messages if isinstance(messages, list) else None,
        prompt=prompt_text(request),
        # A shadow copy is never streamed; an error's body is no answer.
        answer=text_of(pair.shadow_body, stream=False) if pair.shadow_status == 200 else None,
        reasons=found.reasons,
    )
