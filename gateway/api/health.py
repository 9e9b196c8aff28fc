"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.deps import LifecycleDep, MetricsDep, PoolDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(pool: PoolDep, lifecycle: LifecycleDep) -> JSONResponse:
    """Ready when at least one engine replica is healthy; also how registry changes arrive."""
    ready = pool.ready
    body = {
        "status": "ready" if ready else "not_ready",
        "upstreams": pool.describe(),
        "registry": lifecycle.following(),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(collectors: MetricsDep) -> Response:
    """Prometheus exposition of the gateway's own metrics."""
    return Response(generate_latest(collectors.registry), media_type=CONTENT_TYPE_LATEST)
