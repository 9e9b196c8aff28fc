"""The admin API of `model: "auto"`: read and replace the route table, explain a decision.

- `GET /admin/routes`: the table in use (its text and a summary).
- `PUT /admin/routes`: a new table as YAML (or JSON) in the body; `?dry_run=true` checks it
  and embeds its utterances without storing it. A bad table is a 400 listing every problem;
  the table in use keeps serving either way.
- `POST /admin/classify`: where a text (or a chat or completion body) would go, with every
  route's similarity.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.admin import ActorDep
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.routing.classifier import request_text
from gateway.routing.router import ActiveTable, AutoRouter

router = APIRouter(prefix="/admin", tags=["admin"])
# The largest table accepted (thousands of utterances fit easily).
MAX_TABLE_BYTES = 2_000_000


async def get_router(request: Request) -> AutoRouter:
    """The `auto` router."""
    auto: AutoRouter = request.app.state.router
    return auto


RouterDep = Annotated[AutoRouter, Depends(get_router)]


class RouteTableOut(BaseModel):
    """A route table: where it came from, what it says."""

    id: int
    sha256: str
    created_by: str
    created_at: str
    stored: bool
    summary: dict[str, Any]
    source: str


class ClassifyBody(BaseModel):
    """One of: `text`, chat `messages`, or a completion `prompt`."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, max_length=100_000)
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ClassifyBody:
        given = [f for f in ("text", "messages", "prompt") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `text`, `messages` or `prompt`")
        return self


class ClassifyOut(BaseModel):
    """A decision and its evidence."""

    text: str
    route: str
    adapter: str | None
    confidence: float
    method: str
    reason: str
    threshold: float | None
    scores: dict[str, float]
    table: int


def _table_out(active: ActiveTable, *, stored: bool) -> RouteTableOut:
    return RouteTableOut(
        id=active.id,
        sha256=active.sha256,
        created_by=active.created_by,
        created_at=active.created_at,
        stored=stored,
        summary=active.index.summary(),
        source=active.source,
    )


@router.get("/routes")
async def get_routes(auto: RouterDep) -> RouteTableOut:
    """The route table in use."""
    active = auto.active
    if active is None:
        raise ModelNotFound("No route table is in use.", param="routes", code="not_found")
    return _table_out(active, stored=True)


@router.put("/routes")
async def put_routes(
    request: Request,
    auto: RouterDep,
    actor: ActorDep,
    dry_run: Annotated[bool, Query()] = False,
    reason: Annotated[str, Query(max_length=1024)] = "",
) -> RouteTableOut:
    """Replace the route table (YAML or JSON body); `dry_run` only checks it."""
    raw = await request.body()
    if len(raw) > MAX_TABLE_BYTES:
        raise InvalidRequest(f"the table is over {MAX_TABLE_BYTES} bytes", param="routes")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the table must be UTF-8 text", param="routes") from exc
    if not source.strip():
        raise InvalidRequest("the body must be a route table (YAML or JSON)", param="routes")
    active = await auto.replace(source, actor=actor, reason=reason, dry_run=dry_run)
    return _table_out(active, stored=not dry_run)


@router.post("/classify")
async def classify(body: ClassifyBody, auto: RouterDep) -> ClassifyOut:
    """Where a request would be routed, with every route's similarity."""
    if body.text is not None:
        text = body.text.strip()
    else:
        text = request_text(body.model_dump(exclude_none=True))
    decision, scores = await auto.explain(text)
    active = auto.active
    assert active is not None
    table = active.index.table
    threshold = None
    if decision.route != table.default.name or decision.chosen is not None:
        route = table.route(decision.chosen or decision.route)
        threshold = table.threshold_of(route)
    return ClassifyOut(
        text=text,
        route=decision.route,
        adapter=decision.adapter,
        confidence=round(decision.confidence, 6),
        method=decision.method,
        reason=decision.reason,
        threshold=threshold,
        scores={name: round(value, 6) for name, value in scores.items()},
        table=active.id,
    )
