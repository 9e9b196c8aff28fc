"""The webhook parts, built together from the settings: the outbox the rollout store writes
into, the delivery worker with an HTTP client of its own, and their start and stop."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Settings
from gateway.hooks.delivery import HookDelivery
from gateway.hooks.outbox import Outbox
from gateway.metrics import Metrics


@dataclass
class HookParts:
    """The outbox, its delivery worker and the worker's client."""

    outbox: Outbox
    delivery: HookDelivery
    client: httpx.AsyncClient

    async def start(self) -> None:
        """Start delivering (every replica may: claims are leases)."""
        await self.delivery.start()

    async def stop(self) -> None:
        """Stop delivering and close the client."""
        await self.delivery.stop()
        await self.client.aclose()


def build_hooks(settings: Settings, sessions: sessionmaker[Session], metrics: Metrics) -> HookParts:
    """Build the webhook parts; a committed message wakes the worker at once."""
    hooks = settings.hooks
    outbox = Outbox(
        sessions,
        deadline_s=hooks.deadline_s,
        own_addresses=[(settings.host, settings.port)],
    )
    # A subscriber's redirect is not followed: the signed message goes where it was meant to.
    client = httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(hooks.attempt_timeout_s),
        limits=httpx.Limits(max_connections=hooks.max_in_flight * 2),
    )
    delivery = HookDelivery(sessions, metrics, client, hooks)
    outbox.on_commit(delivery.wake)
    return HookParts(outbox, delivery, client)
