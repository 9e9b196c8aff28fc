"""The admin API: register, inspect, load, unload, pin, retire and delete adapter versions.

The API-key middleware admits only the admin key here (or loopback clients when no admin
key is configured). Every change is one registry transaction with its audit event; the
actor is the caller (`admin`, plus an optional `x-actor` header naming the person).
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from gateway.api.admin_models import (
    AdapterList,
    AdapterOut,
    AuditList,
    AuditOut,
    DeletedOut,
    LoadBody,
    ReasonBody,
    RegisterBody,
    VersionOut,
    adapter_out,
)
from gateway.api.auth import principal_of
from gateway.lifecycle import AdapterLifecycle, RegisterCommand
from gateway.registry.schema import AdapterVersionRow

router = APIRouter(prefix="/admin", tags=["admin"])
_ACTOR = re.compile(r"^[A-Za-z0-9@._ -]{1,64}$")


async def get_lifecycle(request: Request) -> AdapterLifecycle:
    """The adapter lifecycle service."""
    lifecycle: AdapterLifecycle = request.app.state.lifecycle
    return lifecycle


async def get_actor(request: Request) -> str:
    """Who is calling, for the audit trail."""
    principal = principal_of(request.scope)
    who = principal.name if principal is not None else "anonymous"
    person = request.headers.get("x-actor", "")
    return f"{who}:{person}" if _ACTOR.match(person) else who


async def get_reason(body: ReasonBody | None = None) -> str:
    """The optional `{"reason": ...}` body of a change."""
    return (body or ReasonBody()).reason


LifecycleDep = Annotated[AdapterLifecycle, Depends(get_lifecycle)]
ActorDep = Annotated[str, Depends(get_actor)]
ReasonDep = Annotated[str, Depends(get_reason)]
VersionPath = "/adapters/{name}/versions/{version}"


def _out(lifecycle: AdapterLifecycle, row: AdapterVersionRow) -> VersionOut:
    return VersionOut.of(row, row.adapter.name, lifecycle.resident_on(row))


@router.get("/adapters")
async def list_adapters(lifecycle: LifecycleDep) -> AdapterList:
    """Every adapter with every version, its state and where it is resident."""
    adapters = await asyncio.to_thread(lifecycle.registry.adapters)
    return AdapterList(data=[adapter_out(a, lifecycle.resident_on) for a in adapters])


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
    )
    registration = await lifecycle.register(command, actor=actor)
    out = _out(lifecycle, registration.version)
    return JSONResponse(
        out.model_dump(mode="json"), status_code=201 if registration.created else 200
    )


@router.get("/adapters/{name}")
async def get_adapter(name: str, lifecycle: LifecycleDep) -> AdapterOut:
    """One adapter with every version."""
    adapter = await asyncio.to_thread(lifecycle.registry.adapter, name)
    return adapter_out(adapter, lifecycle.resident_on)


@router.get(VersionPath)
async def get_version(name: str, version: int, lifecycle: LifecycleDep) -> VersionOut:
    """One version."""
    return _out(lifecycle, await asyncio.to_thread(lifecycle.registry.version, name, version))


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
    row = await lifecycle.load(name, version, pin=body.pin, actor=actor, reason=body.reason)
    return _out(lifecycle, row)


@router.post(f"{VersionPath}/unload")
async def unload(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Unpin the version and unload it everywhere; it is loaded again on demand."""
    return _out(lifecycle, await lifecycle.unload(name, version, actor=actor, reason=reason))


@router.post(f"{VersionPath}/pin")
async def pin(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Never evict the version."""
    row = await lifecycle.set_pinned(name, version, True, actor=actor, reason=reason)
    return _out(lifecycle, row)


@router.post(f"{VersionPath}/unpin")
async def unpin(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Let the version be evicted again."""
    row = await lifecycle.set_pinned(name, version, False, actor=actor, reason=reason)
    return _out(lifecycle, row)


@router.post(f"{VersionPath}/retire")
async def retire(
    name: str, version: int, lifecycle: LifecycleDep, actor: ActorDep, reason: ReasonDep
) -> VersionOut:
    """Stop serving the version for good."""
    return _out(lifecycle, await lifecycle.retire(name, version, actor=actor, reason=reason))


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
    events = await asyncio.to_thread(lifecycle.registry.audit, adapter, limit)
    return AuditList(data=[AuditOut.of(e) for e in events])
