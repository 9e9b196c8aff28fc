"""Shadow traffic: the candidate answers a copy of the request; nobody sees its answer.

A copy is sent only after the primary request was dispatched, never on the request path:
the request handler hands a job over and goes on. At most `limit` copies run at once; a job
past that is dropped and counted, never queued. When both answers are in, the pair (with
the request id) is queued for the registry, where the quality scorers read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.catalog import AdapterVersion
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.registry.schema import ShadowPairRow
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy

log = logging.getLogger(__name__)
# Bodies longer than this are cut (a pair is for comparison, not an archive).
MAX_BODY_CHARS = 65_536


@dataclass(frozen=True)
class ShadowJob:
    """A request to copy to a rollout's candidate."""

    rollout_id: int
    route: str
    stable_version: int
    candidate: AdapterVersion
    endpoint: str
    payload: dict[str, Any]
    request_id: str


class PairHalf:
    """The primary's side of a pair, filled in when the primary has answered."""

    def __init__(self, runner: ShadowRunner, job: ShadowJob) -> None:
        self._runner = runner
        self.job = job
        self.primary: tuple[int, str, float] | None = None
        self.shadow: tuple[int, str, float] | None = None

    def primary_done(self, status: int, body: bytes, elapsed_s: float) -> None:
        """Record the primary's answer (called once by the request path)."""
        if self.primary is None:
            self.primary = (status, _text(body), elapsed_s * 1000)
            self._runner._maybe_pair(self)

    def shadow_done(self, status: int, body: bytes, elapsed_s: float) -> None:
        self.shadow = (status, _text(body), elapsed_s * 1000)
        self._runner._maybe_pair(self)


class ShadowRunner:
    """Sends shadow copies with bounded concurrency and collects the pairs."""

    def __init__(
        self,
        pool: UpstreamPool,
        proxy: EngineProxy,
        metrics: Metrics,
        *,
        limit: int,
        max_pending_pairs: int = 10_000,
    ) -> None:
        self._pool = pool
        self._proxy = proxy
        self._metrics = metrics
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._pairs: deque[ShadowPairRow] = deque()
        self._max_pending = max_pending_pairs

    @property
    def in_flight(self) -> int:
        """Shadow copies running now."""
        return len(self._tasks)

    def submit(self, job: ShadowJob) -> PairHalf | None:
        """Start a copy now, or drop it (None) when `limit` copies are running."""
        if len(self._tasks) >= self._limit:
            self._metrics.shadow_requests.labels(job.route, "dropped").inc()
            return None
        half = PairHalf(self, job)
        task = asyncio.create_task(self._run(half), name=f"shadow-{job.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._metrics.shadow_requests.labels(job.route, "sent").inc()
        return half

    async def _run(self, half: PairHalf) -> None:
        job = half.job
        body = {**job.payload, "model": job.candidate.engine_name, "stream": False}
        body.pop("stream_options", None)
        started = time.perf_counter()
        status, answer = 0, b""
        try:
            lease, reply = await self._proxy.dispatch(
                job.candidate.engine_name,
                job.endpoint,
                json.dumps(body).encode(),
                f"{job.request_id}:shadow",
                False,
            )
            lease.release()
            status, answer = reply.status, reply.body
        except GatewayError as exc:
            status, answer = exc.status_code, json.dumps(exc.body()).encode()
        except Exception as exc:  # a shadow must never take anything else down
            log.exception("request %s: shadow copy failed", job.request_id)
            status, answer = 500, repr(exc).encode()
        outcome = "completed" if status == 200 else "failed"
        self._metrics.shadow_requests.labels(job.route, outcome).inc()
        half.shadow_done(status, answer, time.perf_counter() - started)

    def _maybe_pair(self, half: PairHalf) -> None:
        if half.primary is None or half.shadow is None:
            return
        if len(self._pairs) >= self._max_pending:
            self._metrics.shadow_requests.labels(half.job.route, "unrecorded").inc()
            return
        job = half.job
        self._pairs.append(
            ShadowPairRow(
                rollout_id=job.rollout_id,
                request_id=job.request_id,
                endpoint=job.endpoint,
                request=job.payload,
                primary_version=job.stable_version,
                primary_status=half.primary[0],
                primary_body=half.primary[1],
                primary_ms=half.primary[2],
                shadow_version=job.candidate.version,
                shadow_status=half.shadow[0],
                shadow_body=half.shadow[1],
                shadow_ms=half.shadow[2],
            )
        )

    def take_pairs(self) -> list[ShadowPairRow]:
        """The pairs completed since the last call (for the registry writer)."""
        taken = list(self._pairs)
        self._pairs.clear()
        return taken

    async def close(self) -> None:
        """Cancel the copies still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _text(body: bytes) -> str:
    return body[: MAX_BODY_CHARS * 4].decode("utf-8", "replace")[:MAX_BODY_CHARS]
