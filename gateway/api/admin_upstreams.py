"""`GET /admin/upstreams`: every engine replica, whether it takes traffic, and what it holds."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.api.deps import PoolDep

router = APIRouter(prefix="/admin", tags=["admin"])


class UpstreamOut(BaseModel):
    """One engine replica as this gateway process sees it."""

    url: str
    # Its health probe passes.
    healthy: bool
    # Requests may go there: healthy and not ejected for a failure burst.
    in_rotation: bool
    # Why it is out (connect, reset, broken, failures), if it is.
    ejected: str | None
    # Seconds left of a failure burst's ejection (then a passing probe brings it back).
    ejected_for_s: float
    failures_in_row: int
    in_flight: int
    # Engine names of the adapter versions loaded there.
    resident: list[str]
    error: str | None


class UpstreamsOut(BaseModel):
    """The replicas, and how many take traffic."""

    in_rotation: int
    upstreams: list[UpstreamOut]


@router.get("/upstreams")
async def upstreams(pool: PoolDep) -> UpstreamsOut:
    """Every engine replica: health, ejection, requests outstanding, resident adapters."""
    items = [UpstreamOut.model_validate(entry) for entry in pool.describe()]
    return UpstreamsOut(in_rotation=sum(u.in_rotation for u in items), upstreams=items)
