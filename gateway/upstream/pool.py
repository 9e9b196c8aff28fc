"""vLLM replicas behind the gateway: health, adapter reconciliation and picking one.

The gateway, not vLLM, is the source of truth for which adapters a replica should
serve: whenever a replica (re)appears healthy, every catalogue adapter it lacks is
loaded into it through `/v1/load_lora_adapter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from gateway.errors import UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.routing.catalog import AdapterVersion

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One vLLM server."""

    url: str
    healthy: bool = False
    in_flight: int = 0
    resident: set[str] = field(default_factory=set)
    last_error: str | None = None


class UpstreamPool:
    """The set of replicas and their health."""

    def __init__(
        self,
        urls: Sequence[str],
        client: httpx.AsyncClient,
        metrics: Metrics,
        adapters: Callable[[], Sequence[AdapterVersion]] = lambda: (),
    ) -> None:
        self.replicas = [Replica(url) for url in urls]
        self._client = client
        self._metrics = metrics
        self._adapters = adapters
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Whether any replica can take traffic."""
        return any(r.healthy for r in self.replicas)

    def pick(self) -> Replica:
        """The healthy replica with the fewest requests in flight."""
        best: Replica | None = None
        for replica in self.replicas:
            if replica.healthy and (best is None or replica.in_flight < best.in_flight):
                best = replica
        if best is None:
            raise UpstreamUnavailable("No inference engine is ready; retry shortly.")
        return best

    def mark_down(self, replica: Replica, reason: str) -> None:
        """Take a replica out of rotation after a failed request; the health loop brings it back."""
        if replica.healthy:
            log.warning("upstream %s marked down: %s", replica.url, reason)
        replica.healthy = False
        replica.last_error = reason
        replica.resident.clear()
        self._metrics.upstream_healthy.labels(replica.url).set(0)
        self._changed.set()

    async def check(self, replica: Replica) -> None:
        """Probe one replica's health and reconcile its adapters when it comes up."""
        try:
            response = await self._client.get(f"{replica.url}/health", timeout=2.0)
            up = response.status_code == 200
        except httpx.HTTPError as exc:
            up, replica.last_error = False, f"{type(exc).__name__}: {exc}"
        if up and not replica.healthy:
            try:
                await self.reconcile(replica)
            except httpx.HTTPError as exc:
                log.warning("upstream %s: reconcile failed: %s", replica.url, exc)
                up = False
        if up != replica.healthy:
            log.info("upstream %s is %s", replica.url, "up" if up else "down")
        if not up:
            replica.resident.clear()
        replica.healthy = up
        self._metrics.upstream_healthy.labels(replica.url).set(1 if up else 0)

    async def reconcile(self, replica: Replica) -> None:
        """Load every catalogue adapter the replica does not already serve."""
        response = await self._client.get(f"{replica.url}/v1/models", timeout=5.0)
        response.raise_for_status()
        served = {m["id"] for m in response.json().get("data", [])}
        for adapter in self._adapters():
            if adapter.engine_name in served:
                continue
            load = await self._client.post(
                f"{replica.url}/v1/load_lora_adapter",
                json={"lora_name": adapter.engine_name, "lora_path": str(adapter.path)},
                timeout=60.0,
            )
            outcome = "ok" if load.status_code == 200 else "error"
            self._metrics.adapter_loads.labels(outcome).inc()
            if outcome == "ok":
                served.add(adapter.engine_name)
            else:
                log.error(
                    "upstream %s: loading %s failed: %s %s",
                    replica.url,
                    adapter.ref,
                    load.status_code,
                    load.text[:300],
                )
        replica.resident = served

    async def check_all(self) -> None:
        """Probe every replica once."""
        await asyncio.gather(*(self.check(r) for r in self.replicas))

    async def _loop(self, interval_s: float) -> None:
        while True:
            await self.check_all()
            self._changed.clear()
            # Re-probe at once after a replica was marked down by a failed request.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=interval_s)

    def start(self, interval_s: float) -> None:
        """Run the health loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(interval_s), name="upstream-health")

    async def stop(self) -> None:
        """Stop the health loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
