"""vLLM replicas behind the gateway: health, adapter residency and picking one.

The gateway, not vLLM, is the source of truth for which adapter versions a replica holds.
Each replica has a `Residency` (bounded, least recently used out first, pinned versions
kept). A request for a version the chosen replica lacks loads it through
`/v1/load_lora_adapter`; whenever a replica (re)appears healthy, `reconcile` restores the
set it should hold: after an engine restart the gateway's own record, after a gateway
restart what the engine still serves plus the pinned and `ready` versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import httpx

from gateway.background.tasks import cancel_and_wait
from gateway.catalog import AdapterVersion, parse_engine_name
from gateway.errors import AdapterLoadFailed, NoRoom, UpstreamError, UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.upstream.outliers import EjectionReason, OutlierDetector, OutlierPolicy, OutlierState
from gateway.upstream.residency import Residency

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 120.0


class AdapterSource(Protocol):
    """What the pool needs to know about adapter versions (the registry, seen from here)."""

    def servable(self) -> Mapping[str, AdapterVersion]:
        """Every version clients may call, by engine name."""

    def wanted(self) -> Sequence[str]:
        """Engine names a fresh replica should hold, most wanted first (pinned, then ready)."""

    def pinned(self) -> set[str]:
        """Engine names that are never evicted."""

    async def before_load(self, version: AdapterVersion) -> str:
        """Check the files again and return the absolute path to load from."""

    async def after_load(self, version: AdapterVersion, replica: str, error: str | None) -> None:
        """Record a load's outcome (a refusal marks the version failed)."""


class NoAdapters:
    """An adapter source with no adapters (the base model only)."""

    def servable(self) -> Mapping[str, AdapterVersion]:
        return {}

    def wanted(self) -> Sequence[str]:
        return ()

    def pinned(self) -> set[str]:
        return set()

    async def before_load(self, version: AdapterVersion) -> str:
        return str(version.path)

    async def after_load(self, version: AdapterVersion, replica: str, error: str | None) -> None:
        return None


@dataclass
class Replica:
    """One vLLM server."""

    url: str
    residency: Residency
    healthy: bool = False
    in_flight: int = 0
    last_error: str | None = None
    # Whether this gateway process has reconciled the replica since it started.
    adopted: bool = field(default=False)
    outlier: OutlierState = field(default_factory=OutlierState)

    @property
    def resident(self) -> set[str]:
        """Engine names of the versions loaded here."""
        return set(self.residency.resident)

    def in_rotation(self, now: float) -> bool:
        """Whether requests may go here: its probe passes and no failure burst keeps it out."""
        return self.healthy and not self.outlier.ejected(now)


@dataclass
class Lease:
    """A replica chosen for one request, with its adapter version kept resident."""

    replica: Replica
    adapter: str | None

    def release(self) -> None:
        """The request is done with the adapter."""
        if self.adapter is not None:
            self.replica.residency.release(self.adapter)
            self.adapter = None


class UpstreamPool:
    """The set of replicas, their health and their resident adapter versions."""

    def __init__(
        self,
        urls: Sequence[str],
        client: httpx.AsyncClient,
        metrics: Metrics,
        *,
        capacity: int = 8,
        source: AdapterSource | None = None,
        outliers: OutlierPolicy | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._capacity = capacity
        self.source: AdapterSource = source or NoAdapters()
        self.outliers = OutlierDetector(outliers or OutlierPolicy())
        self.replicas: list[Replica] = []
        self._by_url: dict[str, Replica] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.set_urls(urls)

    def set_urls(self, urls: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make the pool the replicas at `urls` (from discovery): new ones join unhealthy
        until their first probe passes; gone ones leave (requests they serve finish).
        Returns the URLs added and removed."""
        wanted = list(dict.fromkeys(urls))
        added = [u for u in wanted if u not in self._by_url]
        removed = [r.url for r in self.replicas if r.url not in wanted]
        for url in added:
            residency = Residency(
                self._capacity,
                load=partial(self._load, url),
                unload=partial(self._unload, url),
                on_evict=partial(self._evicted, url),
            )
            self._by_url[url] = Replica(url, residency)
        for url in removed:
            del self._by_url[url]
            self._metrics.forget_upstream(url)
        self.replicas = list(self._by_url.values())
        if added:
            self._changed.set()
        return added, removed

    def describe(self) -> list[dict[str, object]]:
        """Each replica's state, for `/readyz` and `/admin/upstreams`."""
        now = self.outliers.now()
        return [
            {
                "url": r.url,
                "healthy": r.healthy,
                "in_rotation": r.in_rotation(now),
                "ejected": r.outlier.reason,
                "ejected_for_s": round(max(0.0, r.outlier.ejected_until - now), 3),
                "failures_in_row": r.outlier.failures_in_row,
                "in_flight": r.in_flight,
                "resident": sorted(r.residency.resident),
                "error": r.last_error,
            }
            for r in self.replicas
        ]

    @property
    def ready(self) -> bool:
        """Whether any replica can take traffic."""
        now = self.outliers.now()
        return any(r.in_rotation(now) for r in self.replicas)

    def healthy_replicas(self) -> list[Replica]:
        """Replicas that answer their health check."""
        return [r for r in self.replicas if r.healthy]

    def pick(self, adapter: str | None = None, avoid: Replica | None = None) -> Replica:
        """A healthy replica: other than `avoid` if there is one, then one already holding
        `adapter` if any, then the least loaded."""
        best: Replica | None = None
        best_key: tuple[bool, bool, int] | None = None
        now = self.outliers.now()
        for replica in self.replicas:
            if not replica.in_rotation(now):
                continue
            key = (
                replica is avoid,
                adapter is not None and not replica.residency.holds(adapter),
                replica.in_flight,
            )
            if best_key is None or key < best_key:
                best, best_key = replica, key
        if best is None:
            raise UpstreamUnavailable("No inference engine is ready; retry shortly.")
        return best

    async def lease(self, adapter: str | None, avoid: Replica | None = None) -> Lease:
        """Pick a replica for a request and make `adapter` resident there (loading it)."""
        replica = self.pick(adapter, avoid)
        if adapter is not None and await replica.residency.acquire(adapter):
            self._count_resident(replica)
        return Lease(replica, adapter)

    def busy(self, adapter: str) -> int:
        """Requests using `adapter` on any replica right now."""
        return sum(r.residency.busy(adapter) for r in self.replicas)

    async def load_everywhere(self, adapter: str) -> list[str]:
        """Load `adapter` into every healthy replica; the URLs it is resident on."""
        replicas = self.healthy_replicas()
        if not replicas:
            raise UpstreamUnavailable("No inference engine is ready; retry shortly.")
        for replica in replicas:
            await replica.residency.ensure(adapter)
            self._count_resident(replica)
        return [r.url for r in replicas]

    async def remove_everywhere(self, adapter: str) -> bool:
        """Unload `adapter` from every replica, where requests use it once they are done; True
        if it is gone from all now."""
        gone = True
        for replica in self.replicas:
            gone = await replica.residency.retire(adapter) and gone
            self._count_resident(replica)
        return gone

    def apply_pins(self) -> None:
        """Take the pinned set from the adapter source."""
        pins = self.source.pinned()
        for replica in self.replicas:
            replica.residency.set_pins(pins)

    def pin(self, adapter: str) -> None:
        """Pin one version on every replica now, before the snapshot says so."""
        for replica in self.replicas:
            replica.residency.pin(adapter)

    async def sweep(self) -> None:
        """Unload versions that are no longer servable (retired, failed or deleted); one
        still serving requests goes when the last of them is done."""
        servable = self.source.servable()
        for replica in self.healthy_replicas():
            for name in replica.residency.resident:
                if name not in servable:
                    with contextlib.suppress(UpstreamError):
                        await replica.residency.retire(name)
            self._count_resident(replica)

    def unreachable(self, replica: Replica, reason: EjectionReason, detail: str) -> None:
        """Take a replica out of rotation at once: it could not be reached, or broke a
        connection. The health loop probes it now and brings it back when it answers."""
        if self.outliers.unreachable(replica.outlier, reason) and replica.healthy:
            log.warning("upstream %s ejected (%s): %s", replica.url, reason, detail)
            self._metrics.upstream_ejections.labels(replica.url, reason).inc()
        replica.healthy = False
        replica.last_error = detail
        self._metrics.upstream_healthy.labels(replica.url).set(0)
        self._changed.set()

    def probe_soon(self) -> None:
        """Have the health loop probe every replica now rather than at its next interval."""
        self._changed.set()

    def answered(self, replica: Replica, status: int) -> None:
        """The replica answered with `status`: a 5xx counts towards a failure burst."""
        if status < 500:
            self.outliers.success(replica.outlier)
        else:
            self.failed(replica, f"answered {status}")

    def failed(self, replica: Replica, detail: str) -> None:
        """A 5xx answer or a read timeout; enough in a row eject the replica for a while."""
        now = self.outliers.now()
        out = sum(1 for r in self.replicas if r is not replica and r.outlier.ejected(now))
        if self.outliers.failure(replica.outlier, out, len(self.replicas)):
            seconds = replica.outlier.ejected_until - now
            log.warning(
                "upstream %s ejected for %.0fs: %d failures in a row (last: %s)",
                replica.url,
                seconds,
                self.outliers.policy.consecutive_failures,
                detail,
            )
            replica.last_error = detail
            self._metrics.upstream_ejections.labels(replica.url, "failures").inc()
            self._metrics.upstream_healthy.labels(replica.url).set(0)

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
            except (httpx.HTTPError, UpstreamUnavailable) as exc:
                log.warning("upstream %s: reconcile failed: %s", replica.url, exc)
                up = False
        if up != replica.healthy:
            log.info("upstream %s is %s", replica.url, "up" if up else "down")
        replica.healthy = up
        if up:
            replica.last_error = None
            # Active re-admission: a passing probe ends an unreachable replica's ejection at
            # once, a failure burst's once its time has run.
            outlier = replica.outlier
            if outlier.reason is not None and (
                outlier.reason != "failures" or outlier.due(self.outliers.now())
            ):
                reason = self.outliers.readmit(outlier)
                log.info("upstream %s re-admitted (was out: %s)", replica.url, reason)
        in_rotation = replica.in_rotation(self.outliers.now())
        self._metrics.upstream_healthy.labels(replica.url).set(1 if in_rotation else 0)
        self._metrics.upstream_in_flight.labels(replica.url).set(replica.in_flight)

    async def reconcile(self, replica: Replica) -> None:
        """Make the replica hold the versions it should (after it or the gateway restarted)."""
        response = await self._client.get(f"{replica.url}/v1/models", timeout=5.0)
        response.raise_for_status()
        served = {m["id"] for m in response.json().get("data", [])}
        servable = self.source.servable()
        residency = replica.residency
        pinned = [n for n in self.source.pinned() if n in servable]
        if replica.adopted:
            # The engine came back: restore what this gateway had there, oldest first.
            earlier = residency.resident
        else:
            # This gateway just started: what the engine still holds counts as most recently
            # used (kept first, no reload), before what the registry wants resident.
            rank = {n: i for i, n in enumerate(reversed(self.source.wanted()))}
            held = sorted((n for n in served if n in servable), key=lambda n: rank.get(n, -1))
            earlier = [n for n in rank if n not in served] + held
        room = residency.capacity - len(pinned)
        others = list(dict.fromkeys(n for n in earlier if n in servable and n not in pinned))
        desired = others[max(0, len(others) - room) :] + pinned
        residency.forget()
        for stale in served - set(desired):
            # Versions this gateway does not serve (retired, deleted, over capacity) go.
            if parse_engine_name(stale) is not None:
                await self._unload(replica.url, stale)
        for name in desired:
            if name in served:
                residency.mark_resident(name)
                continue
            try:
                await residency.ensure(name)
            except NoRoom as exc:
                log.error("upstream %s: restoring %s failed: %s", replica.url, name, exc.message)
            except UpstreamUnavailable:
                raise
            except Exception as exc:
                # One version that cannot come back (refused, its files gone) must not keep
                # the replica out of rotation, nor stop the others from being restored.
                log.error("upstream %s: restoring %s failed: %r", replica.url, name, exc)
        replica.adopted = True
        self._count_resident(replica)
        log.info("upstream %s holds %s", replica.url, residency.resident)

    async def _load(self, url: str, name: str) -> None:
        version = self.source.servable().get(name)
        if version is None:
            raise AdapterLoadFailed(f"adapter version {name} is no longer servable")
        path = await self.source.before_load(version)
        started = time.perf_counter()
        try:
            response = await self._client.post(
                f"{url}/v1/load_lora_adapter",
                json={"lora_name": name, "lora_path": path},
                timeout=LOAD_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            self._metrics.adapter_load_failures.labels(url, "unreachable").inc()
            self._metrics.adapter_loads.labels(url, "error").inc()
            replica = self._by_url.get(url)
            if replica is not None:
                detail = f"loading {name}: {type(exc).__name__}: {exc}"
                self.unreachable(replica, "connect", detail)
            message = f"The engine at {url} is unreachable; retry shortly."
            raise UpstreamUnavailable(message) from exc
        already = response.status_code == 400 and "already" in response.text
        if response.status_code != 200 and not already:
            detail = f"{response.status_code} {response.text[:300]}"
            log.error("upstream %s: loading %s failed: %s", url, version.ref, detail)
            self._metrics.adapter_load_failures.labels(url, "rejected").inc()
            self._metrics.adapter_loads.labels(url, "error").inc()
            await self.source.after_load(version, url, detail)
            raise AdapterLoadFailed(f"The engine refused to load {version.ref}: {detail}")
        self._metrics.adapter_loads.labels(url, "ok").inc()
        self._metrics.adapter_load_duration.labels(url).observe(time.perf_counter() - started)
        await self.source.after_load(version, url, None)

    async def _unload(self, url: str, name: str) -> None:
        try:
            response = await self._client.post(
                f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30.0
            )
        except httpx.HTTPError as exc:
            # An unreachable engine holds nothing once it is back.
            log.warning("upstream %s: unloading %s failed: %s", url, name, exc)
            return
        if response.status_code != 200:
            log.info("upstream %s: unloading %s: %s", url, name, response.text[:200])

    def _evicted(self, url: str, name: str) -> None:
        log.info("upstream %s: evicted %s (least recently used)", url, name)
        self._metrics.adapter_evictions.labels(url).inc()

    def _count_resident(self, replica: Replica) -> None:
        self._metrics.adapters_resident.labels(replica.url).set(len(replica.residency.resident))

    async def check_all(self) -> None:
        """Probe every replica once."""
        await asyncio.gather(*(self.check(r) for r in self.replicas))

    async def _loop(self, interval_s: float) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:
                # The loop is what brings replicas back: it must outlive any one failure.
                log.exception("health check failed")
            self._changed.clear()
            # Re-probe at once after a replica was marked down by a failed request.
            # `asyncio.timeout` rather than `wait_for`, which on Python 3.11 can swallow the
            # cancellation `stop` sends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._changed.wait()

    def start(self, interval_s: float) -> None:
        """Run the health loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(interval_s), name="upstream-health")

    async def stop(self) -> None:
        """Stop the health loop."""
        await cancel_and_wait(self._task)
        self._task = None
