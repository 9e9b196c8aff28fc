"""`GET /admin/usage`: requests, errors and tokens from the response log, grouped.

`since` and `until` are ISO times or ages (`90s`, `30m`, `24h`, `7d`); by default the last
24 hours. `by` (repeatable) groups by tenant, route, version, variant or endpoint.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from gateway.errors import InvalidRequest
from gateway.quality.responselog import USAGE_KEYS, ResponseLog, UsageKey

router = APIRouter(prefix="/admin", tags=["admin"])
_AGE = re.compile(r"^(\d{1,9}(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageGroup(BaseModel):
    """One group's totals."""

    key: dict[str, Any]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class UsageOut(BaseModel):
    """Usage between two times, grouped."""

    since: datetime
    until: datetime
    by: list[str]
    groups: list[UsageGroup]


def parse_when(text: str, now: datetime, param: str) -> datetime:
    """An ISO time (UTC when it names no zone) or an age before `now`."""
    age = _AGE.match(text.strip())
    if age:
        return now - timedelta(seconds=float(age.group(1)) * _UNITS[age.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidRequest(
            f"{param}: {text[:40]!r} is neither an ISO time nor an age like 24h", param=param
        ) from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=now.tzinfo)


@router.get("/usage")
async def usage(
    request: Request,
    since: Annotated[str, Query(max_length=64)] = "24h",
    until: Annotated[str | None, Query(max_length=64)] = None,
    by: Annotated[list[UsageKey] | None, Query(max_length=len(USAGE_KEYS))] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> UsageOut:
    """Requests, errors and tokens per group, largest token use first."""
    now = datetime.now(UTC)
    start = parse_when(since, now, "since")
    end = parse_when(until, now, "until") if until is not None else now
    if end <= start:
        raise InvalidRequest("until must be after since", param="until")
    keys: list[UsageKey] = list(dict.fromkeys(by or ["tenant", "route"]))
    responses: ResponseLog = request.app.state.responses
    rows = await responses.usage(start, end, keys, limit)
    return UsageOut(
        since=start,
        until=end,
        by=list(keys),
        groups=[UsageGroup(**vars(row)) for row in rows],
    )
