"""`GET /admin/rollouts/{ref}/evidence`: the candidate's answers that did badly, with their
texts, for a training pipeline to export as counterexamples (after a rollback, say).

`ref` is a rollout id, or a route for the route's active or latest rollout. The evidence is
served canary answers (a failed verifier, a value-only score below `reward_below`, a rating
below the middle, an error) and shadow pairs whose candidate side failed a verifier, scored
below `reward_below` or errored. `source` picks canary, shadow or all (default).

Paging: the canary answers come first, by response id, then the shadow pairs, by pair id.
`next_after` (`canary:<id>` or `shadow:<id>`, None on the last page) passed back as `after`
gives the next page; every piece comes once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from gateway.api.deps import RolloutsDep
from gateway.api.evidence_models import EvidenceList, EvidenceOut, EvidenceRollout
from gateway.quality.evidence import SOURCES, Cursor, EvidenceService
from gateway.rollout.refs import find_rollout

router = APIRouter(prefix="/admin", tags=["admin"])


def _service(request: Request) -> EvidenceService:
    service: EvidenceService = request.app.state.evidence
    return service


@router.get("/rollouts/{ref}/evidence")
async def evidence(
    ref: str,
    rollouts: RolloutsDep,
    request: Request,
    source: Literal["canary", "shadow", "all"] = "all",
    reward_below: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> EvidenceList:
    """A page of the candidate's answers that did badly, canary answers first."""
    cursor = Cursor.parse(after) if after is not None else None
    row = await find_rollout(rollouts, ref)
    page = await _service(request).page(
        row.id,
        sources=SOURCES if source == "all" else (source,),
        reward_below=reward_below,
        limit=limit,
        after=cursor,
    )
    return EvidenceList(
        rollout=EvidenceRollout(
            id=row.id,
            route=row.route,
            stable_version=row.stable_version,
            candidate_version=row.candidate_version,
            stage=row.stage.value,
            active=row.active_route is not None,
        ),
        data=[EvidenceOut.of(e) for e in page.data],
        next_after=page.next_after,
    )
