"""Send one OpenAI request to a replica and hand back its answer, whole or as a stream.

A request that never reached a replica (the connection refused, or reset before the engine
sent a byte) goes once more to another replica (to the same one when no other is in
rotation); once the engine has answered (a stream's first bytes included) nothing is sent
again. Each answer feeds the pool's outlier detection (`gateway.upstream.outliers`).

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
from gateway.observability.tracing import Tracing, end_span
from gateway.upstream.pool import Lease, Replica, UpstreamPool

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


class NotReached(UpstreamUnavailable):
    """The request never reached the replica: safe to send to another one."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EngineProxy:
    """Forwards requests to the replica the pool leased for them."""

    def __init__(
        self,
        pool: UpstreamPool,
        metrics: Metrics,
        connect_timeout_s: float,
        read_timeout_s: float,
        tracing: Tracing | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._tracing = tracing
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

    async def dispatch(
        self, adapter: str | None, path: str, payload: bytes, request_id: str, stream: bool
    ) -> tuple[Lease, UpstreamReply]:
        """Lease a replica holding `adapter` (loading it if need be) and send; the caller
        releases the lease once the answer is consumed.

        Sent once more, elsewhere, when it never reached the replica; and once more after a
        404 for the adapter (the engine lost the version: it restarted between two health
        checks, or another gateway replica evicted it), which is loaded again first."""
        reached_retry = lost_retry = False
        avoid: Replica | None = None
        while True:
            lease = await self._pool.lease(adapter, avoid)
            try:
                reply = await self.send(lease.replica, path, payload, request_id, stream)
            except NotReached as exc:
                lease.release()
                if reached_retry:
                    raise
                reached_retry = True
                avoid = lease.replica
                self._metrics.upstream_retries.labels(exc.reason).inc()
                log.warning(
                    "request %s: %s not reached (%s); sending it to another replica",
                    request_id,
                    lease.replica.url,
                    exc.reason,
                )
                continue
            except BaseException:
                lease.release()
                raise
            if reply.status == 404 and adapter is not None and not lost_retry:
                lost_retry = True
                log.warning(
                    "request %s: %s lost its %s; reloading", request_id, lease.replica.url, adapter
                )
                reply.close()
                lease.release()
                lease.replica.residency.discard(adapter)
                continue
            return lease, reply

    async def send(
        self, replica: Replica, path: str, payload: bytes, request_id: str, stream: bool
    ) -> UpstreamReply:
        """POST `payload` to `path` on `replica`; a stream is relayed event by event."""
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self._tracing is None:
            return await self._send(replica, path, payload, headers, request_id, stream)
        span = self._tracing.start_upstream(replica.url, path, headers)
        try:
            reply = await self._send(replica, path, payload, headers, request_id, stream)
        except BaseException as exc:
            end_span(span, None, exc)
            raise
        if reply.stream is None:
            end_span(span, reply.status)
            return reply
        release = reply.close
        ended = False

        def close() -> None:
            # The span ends with the stream: when the client has had it, or left.
            nonlocal ended
            release()
            if not ended:
                ended = True
                end_span(span, reply.status)

        reply.close = close
        return reply

    async def _send(
        self,
        replica: Replica,
        path: str,
        payload: bytes,
        headers: dict[str, str],
        request_id: str,
        stream: bool,
    ) -> UpstreamReply:
        if self._session is None:
            raise UpstreamUnavailable("The gateway is not started.")
        replica.in_flight += 1
        try:
            response = await self._session.post(
                f"{replica.url}{path}", data=payload, headers=headers
            )
        except BaseException as exc:
            replica.in_flight -= 1
            raise self._before_answer(exc, replica, request_id) from exc
        self._pool.answered(replica, response.status)
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

    def _before_answer(
        self, exc: BaseException, replica: Replica, request_id: str
    ) -> BaseException:
        """A failure before the engine's first byte: not reached, or no answer in time."""
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
            self._metrics.upstream_errors.labels("connect").inc()
            self._pool.unreachable(replica, "connect", detail)
            return NotReached("The inference engine is unavailable; retry shortly.", "connect")
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
            # Reset before any byte of the answer: the engine died (its next connection is
            # refused, which ejects it) or closed a kept-alive connection as it was reused.
            # It did not answer this request; the reset counts towards a failure burst.
            self._metrics.upstream_errors.labels("reset").inc()
            self._pool.failed(replica, detail)
            # A dead engine refuses the probe's connection: out now, not at the next probe.
            self._pool.probe_soon()
            return NotReached("The inference engine is unavailable; retry shortly.", "reset")
        return self._translate(exc, replica, request_id)

    def _translate(self, exc: BaseException, replica: Replica, request_id: str) -> BaseException:
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
            self._metrics.upstream_errors.labels("timeout").inc()
            self._pool.failed(replica, detail)
            log.warning("request %s: upstream %s timed out", request_id, replica.url)
            return UpstreamTimeout("The inference engine did not answer in time.")
        if isinstance(exc, aiohttp.ClientError):
            # The connection broke mid-answer: the engine likely died.
            self._metrics.upstream_errors.labels("broken").inc()
            self._pool.unreachable(replica, "broken", detail)
            log.warning("request %s: upstream %s failed: %r", request_id, replica.url, exc)
            return UpstreamError("The inference engine failed while answering.")
        return exc
