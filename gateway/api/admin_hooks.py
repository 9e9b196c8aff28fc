"""The webhook admin API: subscribe receivers to rollout events and see what they were sent.

- `POST /admin/hooks`: subscribe a URL (`url`, `events`, `description`, `secret`); the answer
  (201) is the only one that shows the signing secret.
- `GET /admin/hooks`: the subscriptions (`?all=true`: removed ones too); `GET
  /admin/hooks/{id}`: one. Secrets appear as fingerprints only.
- `DELETE /admin/hooks/{id}`: remove (deactivate) a subscription; its history stays readable.
- `GET /admin/hooks/{id}/messages`: its newest messages (`?status=pending|delivered|dead`,
  `limit`), each with every attempt.
- `POST /admin/hooks/{id}/test`: send it a `hook.test` message now and say what the receiver
  answered (within the attempt timeout).

Subscriptions are read and written in a worker thread: creating one may resolve its host
(to refuse the gateway's own address) and every call is a database transaction.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.api.deps import ActorDep
from gateway.api.hook_models import (
    HookBody,
    HookCreated,
    HookList,
    HookOut,
    HookTestOut,
    MessageList,
    MessageOut,
    MessageStatus,
)
from gateway.errors import Conflict
from gateway.hooks.delivery import HookDelivery
from gateway.hooks.outbox import Outbox

router = APIRouter(prefix="/admin", tags=["admin"])


def _outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


def _delivery(request: Request) -> HookDelivery:
    delivery: HookDelivery = request.app.state.hook_delivery
    return delivery


@router.post("/hooks", status_code=201)
async def create(body: HookBody, request: Request, actor: ActorDep) -> HookCreated:
    """Subscribe a receiver; the answer holds its signing secret, shown this once."""
    row, _secret = await asyncio.to_thread(
        _outbox(request).create, body.url, body.events, body.description, actor, body.secret
    )
    return HookCreated.model_validate(row, from_attributes=True)


@router.get("/hooks")
async def list_hooks(
    request: Request,
    removed: Annotated[bool, Query(alias="all", description="Removed ones too.")] = False,
) -> HookList:
    """The subscriptions, oldest first."""
    rows = await asyncio.to_thread(_outbox(request).list, include_removed=removed)
    return HookList(data=[HookOut.of(row) for row in rows])


@router.get("/hooks/{hook_id}")
async def get(hook_id: int, request: Request) -> HookOut:
    """One subscription."""
    return HookOut.of(await asyncio.to_thread(_outbox(request).get, hook_id))


@router.delete("/hooks/{hook_id}")
async def remove(hook_id: int, request: Request) -> HookOut:
    """Deactivate a subscription: no new messages, its pending ones dropped (`dead`)."""
    return HookOut.of(await asyncio.to_thread(_outbox(request).delete, hook_id))


@router.get("/hooks/{hook_id}/messages")
async def messages(
    hook_id: int,
    request: Request,
    status: Annotated[MessageStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> MessageList:
    """The subscription's newest messages with their attempts."""
    views = await asyncio.to_thread(_outbox(request).messages, hook_id, status, limit)
    return MessageList(data=[MessageOut.of(view) for view in views])


@router.post("/hooks/{hook_id}/test")
async def test(hook_id: int, request: Request) -> HookTestOut:
    """Send the subscription a `hook.test` message now; what its receiver answered."""
    delivery = _delivery(request)
    message = await asyncio.to_thread(_outbox(request).send_test, hook_id, hold_s=delivery.lease_s)
    report = await delivery.deliver_now(message.message_id)
    if report is None:
        # Removed meanwhile: `send_test` found it active, the claim no longer did.
        raise Conflict(f"webhook subscription {hook_id} was removed", param="id")
    return HookTestOut.of(report)
