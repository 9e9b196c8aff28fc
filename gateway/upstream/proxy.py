"""Send one OpenAI request to a replica and hand back its answer, whole or as a stream.

The request path uses aiohttp: per request it costs about a third of the CPU of an httpx
client on this workload (see docs/benchmarks.md), and this is the gateway's hot path. Health
probes and adapter loads stay on httpx. Client failures become the gateway's own errors here,
so nothing above this module knows which HTTP client is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.upstream.pool import Replica, UpstreamPool

log = logging.getLogger(__name__)

_SSE_EVENT_END = b"\n\n"


@dataclass
class UpstreamReply:
    """The engine's answer: status, content type and either a body or a byte stream."""

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    # Releases a stream's connection; runs once, also when the stream was never iterated.
    close: Callable[[], None] = lambda: None


class EngineProxy:
    """Forwards requests to the replica the pool leased for them."""

    def __init__(
        self,
        pool: UpstreamPool,
        metrics: Metrics,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the connection pool (inside the running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024, ttl_dns_cache=300),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )

    async def close(self) -> None:
        """Close every upstream connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, replica: Replica, path: str, payload: bytes, request_id: str, stream: bool
    ) -> UpstreamReply:
        """POST `payload` to `path` on `replica`; a stream is relayed event by event."""
        if self._session is None:
            raise UpstreamUnavailable("The gateway is not started.")
        replica.in_flight += 1
        try:
            response = await self._session.post(
                f"{replica.url}{path}",
                data=payload,
                headers={"Content-Type": "application/json", "X-Request-Id": request_id},
            )
        except BaseException as exc:
            replica.in_flight -= 1
            raise self._translate(exc, replica, request_id) from exc
        content_type = response.headers.get("Content-Type", "application/json")
        if not stream or response.status != 200:
            try:
                body = await response.read()
            except BaseException as exc:
                raise self._translate(exc, replica, request_id) from exc
            finally:
                response.release()
                replica.in_flight -= 1
            return UpstreamReply(response.status, content_type, body=body)
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                response.close()
                replica.in_flight -= 1

        return UpstreamReply(
            response.status,
            content_type,
            stream=self._relay(response, replica, request_id, close),
            close=close,
        )

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        replica: Replica,
        request_id: str,
        close: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        """Yield whole SSE events as they arrive; a failure raises a gateway error."""
        pending = b""
        try:
            async for chunk in response.content.iter_any():
                pending += chunk
                end = pending.rfind(_SSE_EVENT_END)
                if end >= 0:
                    cut = end + len(_SSE_EVENT_END)
                    # Only whole events go out, so an error event never lands inside one.
                    yield pending[:cut]
                    pending = pending[cut:]
            if pending:
                yield pending
        except GeneratorExit:
            raise
        except BaseException as exc:
            raise self._translate(exc, replica, request_id) from exc
        finally:
            close()

    def _translate(self, exc: BaseException, replica: Replica, request_id: str) -> BaseException:
        if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
            self._metrics.upstream_errors.labels("connect").inc()
            self._pool.mark_down(replica, f"{type(exc).__name__}: {exc}")
            return UpstreamUnavailable("The inference engine is unavailable; retry shortly.")
        if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
            self._metrics.upstream_errors.labels("timeout").inc()
            log.warning("request %s: upstream %s timed out", request_id, replica.url)
            return UpstreamTimeout("The inference engine did not answer in time.")
        if isinstance(exc, aiohttp.ClientError):
            # The connection broke mid-answer: the engine likely died.
            self._metrics.upstream_errors.labels("broken").inc()
            self._pool.mark_down(replica, f"{type(exc).__name__}: {exc}")
            log.warning("request %s: upstream %s failed: %r", request_id, replica.url, exc)
            return UpstreamError("The inference engine failed while answering.")
        return exc
