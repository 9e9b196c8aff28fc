"""Every request dependency of the routes: the services `create_app` built, taken from app
state, and who is calling with why.

They are `async def` so FastAPI calls them in the event loop, not in a worker thread. The
two hot OpenAI routes do not use them (see `gateway.api.openai`).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request

from gateway.api.adapter_models import ReasonBody
from gateway.api.auth import principal_of
from gateway.api.serving import OpenAIService
from gateway.lifecycle import AdapterLifecycle
from gateway.metrics import Metrics
from gateway.rollout.manager import RolloutManager
from gateway.routing.router import AutoRouter
from gateway.upstream.pool import UpstreamPool

# An `x-actor` header names the person behind a key in the audit trail.
_ACTOR = re.compile(r"^[A-Za-z0-9@._ -]{1,64}$")


async def get_service(request: Request) -> OpenAIService:
    """The OpenAI serving service."""
    service: OpenAIService = request.app.state.service
    return service


async def get_pool(request: Request) -> UpstreamPool:
    """The upstream pool."""
    pool: UpstreamPool = request.app.state.pool
    return pool


async def get_metrics(request: Request) -> Metrics:
    """The metrics collectors."""
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_lifecycle(request: Request) -> AdapterLifecycle:
    """The adapter lifecycle service."""
    lifecycle: AdapterLifecycle = request.app.state.lifecycle
    return lifecycle


async def get_rollouts(request: Request) -> RolloutManager:
    """The rollout manager."""
    manager: RolloutManager = request.app.state.rollouts
    return manager


async def get_router(request: Request) -> AutoRouter:
    """The `auto` router."""
    auto: AutoRouter = request.app.state.router
    return auto


async def get_actor(request: Request) -> str:
    """Who is calling, for the audit trail: the key's owner, plus a valid `x-actor`."""
    principal = principal_of(request.scope)
    who = principal.name if principal is not None else "anonymous"
    person = request.headers.get("x-actor", "")
    return f"{who}:{person}" if _ACTOR.match(person) else who


async def get_reason(body: ReasonBody | None = None) -> str:
    """The optional `{"reason": ...}` body of a change."""
    return (body or ReasonBody()).reason


ServiceDep = Annotated[OpenAIService, Depends(get_service)]
PoolDep = Annotated[UpstreamPool, Depends(get_pool)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LifecycleDep = Annotated[AdapterLifecycle, Depends(get_lifecycle)]
RolloutsDep = Annotated[RolloutManager, Depends(get_rollouts)]
RouterDep = Annotated[AutoRouter, Depends(get_router)]
ActorDep = Annotated[str, Depends(get_actor)]
ReasonDep = Annotated[str, Depends(get_reason)]
