"""The admin API of the quality scorers: read and replace the per-route configuration.

- `GET /admin/scorers`: the configuration in use (its text and each route's scorers).
- `PUT /admin/scorers`: a new configuration as YAML (or JSON) in the body; `?dry_run=true`
  only checks it. A bad configuration is a 400 listing every problem; the one in use keeps
  scoring either way.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from gateway.api.bodies import document_text
from gateway.api.deps import ActorDep
from gateway.errors import RouteNotFound
from gateway.quality.scorers import ActiveScorers, ScorerConfigs

router = APIRouter(prefix="/admin", tags=["admin"])
MAX_CONFIG_BYTES = 1_000_000


class ScorerOut(BaseModel):
    """One scorer of a route."""

    name: str
    kind: str
    sample_rate: float


class ScorersOut(BaseModel):
    """A scorer configuration: its registry id (0 for a dry run), text and routes."""

    id: int
    sha256: str
    stored: bool
    created_by: str
    created_at: str
    sample_rate: float
    routes: dict[str, list[ScorerOut]]
    source: str

    @classmethod
    def of(cls, active: ActiveScorers, *, stored: bool) -> ScorersOut:
        config = active.config
        routes: dict[str, Any] = {
            route: [ScorerOut(name=s.name, kind=s.kind, sample_rate=s.sample_rate) for s in scorers]
            for route, scorers in config.scorers.items()
        }
        return cls(
            id=active.id,
            sha256=active.sha256,
            stored=stored,
            created_by=active.created_by,
            created_at=active.created_at,
            sample_rate=config.spec.sample_rate,
            routes=routes,
            source=config.source,
        )


def _configs(request: Request) -> ScorerConfigs:
    configs: ScorerConfigs = request.app.state.scorers
    return configs


@router.get("/scorers")
async def get_scorers(request: Request) -> ScorersOut:
    """The scorer configuration in use."""
    active = _configs(request).active
    if active is None:
        raise RouteNotFound("No scorer configuration is in use.", param="scorers")
    return ScorersOut.of(active, stored=True)


@router.put("/scorers")
async def put_scorers(
    request: Request,
    actor: ActorDep,
    dry_run: Annotated[bool, Query()] = False,
    reason: Annotated[str, Query(max_length=1024)] = "",
) -> ScorersOut:
    """Replace the scorer configuration (YAML or JSON body); `dry_run` only checks it."""
    source = await document_text(
        request, limit=MAX_CONFIG_BYTES, param="scorers", what="scorer configuration"
    )
    active = await _configs(request).replace(source, actor=actor, reason=reason, dry_run=dry_run)
    return ScorersOut.of(active, stored=not dry_run)
