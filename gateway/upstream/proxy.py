"""Send one OpenAI request to a replica and hand back its answer, whole or as a stream.

httpx failures become the gateway's own errors here, so nothing above this module
knows about httpx.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

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


class EngineProxy:
    """Forwards requests to the least-loaded healthy replica."""

    def __init__(self, pool: UpstreamPool, client: httpx.AsyncClient, metrics: Metrics) -> None:
        self._pool = pool
        self._client = client
        self._metrics = metrics

    async def send(self, path: str, payload: bytes, request_id: str, stream: bool) -> UpstreamReply:
        """POST `payload` to `path` on a replica; a stream is relayed event by event."""
        replica = self._pool.pick()
        request = self._client.build_request(
            "POST",
            f"{replica.url}{path}",
            content=payload,
            headers={"content-type": "application/json", "x-request-id": request_id},
        )
        replica.in_flight += 1
        try:
            response = await self._client.send(request, stream=True)
        except BaseException as exc:
            replica.in_flight -= 1
            raise self._translate(exc, replica, request_id) from exc
        content_type = response.headers.get("content-type", "application/json")
        if not stream or response.status_code != 200:
            try:
                body = await response.aread()
            except BaseException as exc:
                raise self._translate(exc, replica, request_id) from exc
            finally:
                await response.aclose()
                replica.in_flight -= 1
            return UpstreamReply(response.status_code, content_type, body=body)
        return UpstreamReply(
            response.status_code,
            content_type,
            stream=self._relay(response, replica, request_id),
        )

    async def _relay(
        self, response: httpx.Response, replica: Replica, request_id: str
    ) -> AsyncIterator[bytes]:
        """Yield whole SSE events as they arrive; a failure raises a gateway error."""
        pending = b""
        try:
            async for chunk in response.aiter_raw():
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
            await response.aclose()
            replica.in_flight -= 1

    def _translate(self, exc: BaseException, replica: Replica, request_id: str) -> BaseException:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            self._metrics.upstream_errors.labels("timeout").inc()
            log.warning("request %s: upstream %s timed out", request_id, replica.url)
            return UpstreamTimeout("The inference engine did not answer in time.")
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            self._metrics.upstream_errors.labels("connect").inc()
            self._pool.mark_down(replica, f"{type(exc).__name__}: {exc}")
            return UpstreamUnavailable("The inference engine is unavailable; retry shortly.")
        if isinstance(exc, httpx.HTTPError):
            # The connection broke mid-answer: the engine likely died.
            self._metrics.upstream_errors.labels("broken").inc()
            self._pool.mark_down(replica, f"{type(exc).__name__}: {exc}")
            log.warning("request %s: upstream %s failed: %r", request_id, replica.url, exc)
            return UpstreamError("The inference engine failed while answering.")
        return exc
