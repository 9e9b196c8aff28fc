"""Warming a rollout's candidate up on every engine replica before it serves anyone.

A rollout starts only once its candidate is loaded into every healthy replica and answered
one request there. A gateway replica that learns of a rollout another one started warms
the candidate up itself (in the background) and routes nobody to it until then.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.catalog import engine_name
from gateway.config import RolloutSettings
from gateway.errors import GatewayError, UpstreamError
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy

if TYPE_CHECKING:
    from gateway.rollout.manager import LiveRollout

log = logging.getLogger(__name__)


class CandidateWarmer:
    """Which rollouts' candidates are warm on this gateway replica, and warming them."""

    def __init__(self, pool: UpstreamPool, proxy: EngineProxy, settings: RolloutSettings) -> None:
        self._pool = pool
        self._proxy = proxy
        self._settings = settings
        self._warm: set[int] = set()
        self._warming: dict[int, asyncio.Task[None]] = {}

    def is_warm(self, rollout_id: int) -> bool:
        """Whether the rollout's candidate is warm here."""
        return rollout_id in self._warm

    def mark_warm(self, rollout_id: int) -> None:
        """The rollout's candidate was warmed up here (by the command that started it)."""
        self._warm.add(rollout_id)

    def stop(self) -> None:
        """Cancel the warm-ups still running."""
        for task in self._warming.values():
            task.cancel()

    async def warm_up(self, engine_name: str, request_id: str) -> None:
        """Load the version into every healthy replica and check one request succeeds there."""
        replicas = await self._pool.load_everywhere(engine_name)
        body = json.dumps(
            {
                "model": engine_name,
                "prompt": self._settings.warmup_prompt,
                "max_tokens": self._settings.warmup_max_tokens,
            }
        ).encode()
        for replica in self._pool.healthy_replicas():
            if replica.url not in replicas:
                continue
            reply = await self._proxy.send(replica, "/v1/completions", body, request_id, False)
            if reply.status != 200:
                raise UpstreamError(
                    f"the warm-up request to {engine_name} on {replica.url} failed with "
                    f"{reply.status}: {reply.body[:300].decode('utf-8', 'replace')}",
                    code="warmup_failed",
                )

    def warm_missing(self, live: Iterable[LiveRollout]) -> None:
        """Warm up here the candidates of rollouts another gateway replica started."""
        for rollout in live:
            if rollout.id in self._warm or rollout.id in self._warming:
                continue
            self._warming[rollout.id] = asyncio.create_task(
                self._warm_remote(rollout), name=f"warm-rollout-{rollout.id}"
            )

    async def _warm_remote(self, rollout: LiveRollout) -> None:
        name = engine_name(rollout.route, rollout.candidate_version)
        try:
            await self.warm_up(name, f"warmup-{rollout.id}")
            self._warm.add(rollout.id)
            log.info("rollout %s: %s warmed up here", rollout.id, name)
        except GatewayError as exc:
            log.warning("rollout %s: %s did not warm up here: %s", rollout.id, name, exc.message)
        finally:
            self._warming.pop(rollout.id, None)
