"""The admin API of `model: "auto"`: read and replace the route table, explain a decision.

- `GET /admin/routes`: the table in use (its text and a summary).
- `PUT /admin/routes`: a new table as YAML (or JSON) in the body; `?dry_run=true` checks it
  and embeds its utterances without storing it. A bad table is a 400 listing every problem;
  the table in use keeps serving either way.
- `POST /admin/classify`: where a text (or a chat or completion body) would go, with every
  route's similarity.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.api.bodies import document_text
from gateway.api.deps import ActorDep, RouterDep
from gateway.api.route_table_models import ClassifyBody, ClassifyOut, RouteTableOut, table_out

router = APIRouter(prefix="/admin", tags=["admin"])
# The largest table accepted (thousands of utterances fit easily).
MAX_TABLE_BYTES = 2_000_000


@router.get("/routes")
async def get_routes(auto: RouterDep) -> RouteTableOut:
    """The route table in use."""
    return table_out(auto.in_use(), stored=True)


@router.put("/routes")
async def put_routes(
    request: Request,
    auto: RouterDep,
    actor: ActorDep,
    dry_run: Annotated[bool, Query()] = False,
    reason: Annotated[str, Query(max_length=1024)] = "",
) -> RouteTableOut:
    """Replace the route table (YAML or JSON body); `dry_run` only checks it."""
    source = await document_text(request, limit=MAX_TABLE_BYTES, param="routes", what="route table")
    active = await auto.replace(source, actor=actor, reason=reason, dry_run=dry_run)
    return table_out(active, stored=not dry_run)


@router.post("/classify")
async def classify(body: ClassifyBody, auto: RouterDep) -> ClassifyOut:
    """Where a request would be routed, with every route's similarity."""
    return ClassifyOut.of(await auto.explain(body.model_dump(exclude_none=True)))
