"""The adapter admin API: register, inspect, load, unload, pin, retire, make stable and delete
adapter versions, and read the audit trail.

The API-key middleware admits only the admin key here (or loopback clients when no admin
key is configured). Every change is one registry transaction with its audit event; the
actor is the caller (`admin`, plus an optional `x-actor` header naming the person). Each
handler is one call into the lifecycle (or the rollout manager) and its answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from gateway.api.adapter_models import (
    AdapterList,
    AdapterOut,
    AuditList,
    AuditOut,
    DeletedOut,
    LoadBody,
    RegisterBody,
    VersionOut,
)
from gateway.api.deps import ActorDep, LifecycleDep, ReasonDep, RolloutsDep
from gateway.lifecycle import RegisterCommand

router = APIRouter(prefix="/admin", tags=["admin"])
VersionPath = "/adapters/{name}/versions/{version}"


@router.get("/adapters")
async def list_adapters(lifecycle: LifecycleDep) -> AdapterList:
    """Every adapter with every version, its state and where it is resident."""
    return AdapterList(data=[AdapterOut.of(a) for a in await lifecycle.adapters()])


@router.post("/adapters", status_code=201, response_model=VersionOut)
async def register(body: RegisterBody, lifecycle: LifecycleDep, actor: ActorDep) -> JSONResponse:
    """Register a version (201); the same files again answer the existing version (200)."""
    command = RegisterCommand(
        name=body.name,
        path=body.path,
        sha256=body.sha256,
        base_model=body.base_model,
        manifest=body.manifest,
        reason=body.reason,
        serve_first=body.serve_first,
    )
    view = await lifecycle.register(command, actor=actor)
    out = VersionOut.of(view)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if view.created else 200)


@router.get("/adapters/{name}")
async def get_adapter(name: str, lifecycle: LifecycleDep) -> AdapterOut:
    """One adapter with every version."""
    return AdapterOut.of(await lifecycle.adapter(name))


@router.get(VersionPath)
async def get_version(name: str, version: int, lifecycle: LifecycleDep) -> VersionOut:
    """One version."""
    return VersionOut.of(await lifecycle.version(name, version))


@router.post(f"{VersionPath}/load")
async def load(
    name: str,
    version: int,
    lifecycle: LifecycleDep,
    actor: ActorDep,
    body: LoadBody | None = None,
) -> VersionOut:
    """Load the version into every healthy replica now (optionally pinned)."""
    body = body or LoadBody()
    view = await lifecycle.load(name, version, pin=body.pin, actor=actor, reason=body.reason)
    return VersionOut.of(view)


@router.post(f"{VersionPath}/unload")
async def unload(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Unpin the version and unload it everywhere; it is loaded again on demand."""
    return VersionOut.of(await lifecycle.unload(name, version, actor=actor, reason=reason))


@router.post(f"{VersionPath}/pin")
async def pin(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Never evict the version."""
    view = await lifecycle.set_pinned(name, version, True, actor=actor, reason=reason)
    return VersionOut.of(view)


@router.post(f"{VersionPath}/unpin")
async def unpin(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Let the version be evicted again."""
    view = await lifecycle.set_pinned(name, version, False, actor=actor, reason=reason)
    return VersionOut.of(view)


@router.post(f"{VersionPath}/retire")
async def retire(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Stop serving the version for good."""
    return VersionOut.of(await lifecycle.retire(name, version, actor=actor, reason=reason))


@router.post(f"{VersionPath}/stable")
async def make_stable(
    name: str, version: int, rollouts: RolloutsDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Serve `name@version` under `name` from now on, without a rollout (refused while the
    route has an active rollout)."""
    return VersionOut.of(await rollouts.make_stable(name, version, actor=actor, reason=reason))


@router.delete(VersionPath)
async def delete(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> DeletedOut:
    """Remove a retired or failed version (refused while it can serve traffic)."""
    await lifecycle.delete(name, version, actor=actor, reason=reason)
    return DeletedOut(name=name, version=version)


@router.get("/audit")
async def audit(
    lifecycle: LifecycleDep,
    adapter: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> AuditList:
    """The newest audit events, oldest first."""
    return AuditList(data=[AuditOut.of(e) for e in await lifecycle.audit(adapter, limit)])
