"""Engine replicas by DNS: every address a name resolves to is a replica.

Behind a headless Kubernetes Service (`clusterIP: None`) a name resolves to one A record per
ready pod. The name is resolved again every interval; the pool gains the new addresses
(each joins once its health probe passes and its adapters are restored) and loses the ones
that left. A failed resolution keeps the replicas the pool has: a DNS outage must not
empty a working pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from gateway.background.tasks import cancel_and_wait
from gateway.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)

# (host, port) -> the addresses the host resolves to right now.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), sorted, duplicates dropped."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def replica_url(scheme: str, address: str, port: int) -> str:
    """The base URL of the replica at `address` (IPv6 in brackets)."""
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


class DnsDiscovery:
    """Keeps the pool's replicas equal to what `url`'s host name resolves to."""

    def __init__(
        self,
        url: str,
        pool: UpstreamPool,
        interval_s: float,
        resolver: Resolver = resolve_all,
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host name in {url!r}")
        self.host = parts.hostname
        self.scheme = parts.scheme
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._pool = pool
        self._interval_s = interval_s
        self._resolver = resolver
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    async def refresh(self) -> bool:
        """Resolve once and update the pool; False when the name did not resolve."""
        try:
            addresses = await self._resolver(self.host, self.port)
        except (OSError, UnicodeError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("resolving %s failed (replicas kept): %s", self.host, self.last_error)
            return False
        if not addresses:
            self.last_error = "no addresses"
            log.warning("%s resolved to no address (replicas kept)", self.host)
            return False
        self.last_error = None
        urls = [replica_url(self.scheme, a, self.port) for a in addresses]
        added, removed = self._pool.set_urls(urls)
        for url in added:
            log.info("replica %s joined (%s)", url, self.host)
        for url in removed:
            log.info("replica %s left (%s)", url, self.host)
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:
                # The loop is what keeps the pool current: it must outlive any one failure.
                log.exception("replica discovery failed")

    async def start(self) -> None:
        """Resolve now, then again every interval in the background."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="upstream-dns")

    async def stop(self) -> None:
        """Stop resolving."""
        await cancel_and_wait(self._task)
        self._task = None
