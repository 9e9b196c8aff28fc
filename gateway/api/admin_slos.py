"""The admin API of rollout analysis's SLOs: read and replace the per-route SLO file.

- `GET /admin/slos`: the SLO file in use (its text and each route's signals).
- `PUT /admin/slos`: a new SLO file as YAML (or JSON) in the body; `?dry_run=true` only
  checks it. A bad file is a 400 listing every problem; the one in use stays either way.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from gateway.analysis.slo import SignalSlo
from gateway.analysis.slos import ActiveSlos, SloConfigs
from gateway.api.bodies import document_text
from gateway.api.deps import ActorDep
from gateway.errors import RouteNotFound

router = APIRouter(prefix="/admin", tags=["admin"])
MAX_SLO_BYTES = 1_000_000


class SignalOut(BaseModel):
    """One signal of a route's SLOs."""

    name: str
    critical: bool

    @classmethod
    def of(cls, signal: SignalSlo) -> SignalOut:
        return cls(name=signal.name, critical=signal.critical)


class SlosOut(BaseModel):
    """An SLO file: its registry id (0 for a dry run), text, and each route's signals;
    `defaults` says whether routes without their own SLOs get the file's defaults."""

    id: int
    sha256: str
    stored: bool
    created_by: str
    created_at: str
    routes: dict[str, list[SignalOut]]
    defaults: bool
    source: str

    @classmethod
    def of(cls, active: ActiveSlos, *, stored: bool) -> SlosOut:
        slos = active.file
        return cls(
            id=active.id,
            sha256=active.sha256,
            stored=stored,
            created_by=active.created_by,
            created_at=active.created_at,
            routes={
                route: [SignalOut.of(signal) for signal in slo.signals]
                for route, slo in slos.routes.items()
            },
            defaults=slos.defaults is not None,
            source=slos.source,
        )


def _slos(request: Request) -> SloConfigs:
    slos: SloConfigs = request.app.state.slos
    return slos


@router.get("/slos")
async def get_slos(request: Request) -> SlosOut:
    """The SLO file in use."""
    active = _slos(request).active
    if active is None:
        raise RouteNotFound("No SLO file is in use.", param="slos")
    return SlosOut.of(active, stored=True)


@router.put("/slos")
async def put_slos(
    request: Request,
    actor: ActorDep,
    dry_run: Annotated[bool, Query()] = False,
    reason: Annotated[str, Query(max_length=1024)] = "",
) -> SlosOut:
    """Replace the SLO file (YAML or JSON body); `dry_run` only checks it."""
    source = await document_text(request, limit=MAX_SLO_BYTES, param="slos", what="SLO file")
    active = await _slos(request).replace(source, actor=actor, reason=reason, dry_run=dry_run)
    return SlosOut.of(active, stored=not dry_run)
