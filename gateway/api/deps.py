"""Shared request dependencies: the services built by `create_app`, taken from app state.

They are `async def` so FastAPI calls them in the event loop, not in a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.serving import OpenAIService
from gateway.metrics import Metrics
from gateway.upstream.pool import UpstreamPool


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


ServiceDep = Annotated[OpenAIService, Depends(get_service)]
PoolDep = Annotated[UpstreamPool, Depends(get_pool)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
