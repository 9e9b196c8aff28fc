"""The response log: a durable record of every answered request, written off the request path.

The request path appends a `Served` to a bounded buffer and goes on; past `max_pending` the
record is dropped and counted, never waited for. Every `flush_s` the writer reads token
counts and texts out of the buffered records in a worker thread and inserts them in one
transaction (a (tenant, request id) already stored keeps its first record, so a batch
retried after a failure is not stored twice). Text is kept per `keep_text`: `off`, `sampled`
(requests a scorer samples, and a `text_sample_rate` share of the others) or `all`, cut to
`max_text_chars`. Every ten minutes, records older than `retention_days` are deleted and
texts older than `text_retention_days` cleared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from gateway.background.lowpriority import LowPriorityThread
from gateway.background.tasks import cancel_and_wait
from gateway.config import QualitySettings
from gateway.metrics import Metrics
from gateway.quality.records import (
    Served,
    answer_text,
    bounded,
    prompt_text,
    token_counts,
    utc,
)
from gateway.registry.quality import USAGE_KEYS, QualityStore, UsageKey, UsageRow
from gateway.registry.schema import utcnow

__all__ = ["USAGE_KEYS", "ResponseLog", "UsageKey", "UsageRow"]
log = logging.getLogger(__name__)
EXPIRE_EVERY_S = 600.0
# Called with each batch of records just stored (the scorers' dispatcher).
Listener = Callable[[list[Served]], None]


class ResponseLog:
    """Buffers answered requests and writes them to the registry in batches."""

    def __init__(self, store: QualityStore, settings: QualitySettings, metrics: Metrics) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._pending: deque[Served] = deque()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._listeners: list[Listener] = []
        # The share of a route's requests some scorer samples (set by the scorers).
        self.score_rate: Callable[[str], float] = lambda route: 0.0
        self._next_expiry = 0.0
        self._thread = LowPriorityThread("response-log")

    @property
    def pending(self) -> int:
        """Records waiting for the writer."""
        return len(self._pending)

    def keeps_text(self, route: str, draw: float) -> bool:
        """Whether a request of `route` with sampling draw `draw` needs its text kept."""
        mode = self._settings.keep_text
        if mode == "all":
            return True
        if mode == "sampled" and draw < self._settings.text_sample_rate:
            return True
        return draw < self.score_rate(route)

    def record(self, served: Served) -> None:
        """Queue one answered request (the request path: never blocks, never raises)."""
        if len(self._pending) >= self._settings.max_pending:
            self._metrics.response_log_records.labels("dropped").inc()
            return
        self._pending.append(served)
        self._metrics.response_log_pending.set(len(self._pending))

    def listen(self, listener: Listener) -> None:
        """Call `listener` with each batch once it is stored."""
        self._listeners.append(listener)

    def holds(self, tenant: str, request_id: str) -> bool:
        """Whether a record of this tenant's request is still waiting to be written."""
        return any(s.request_id == request_id and s.tenant == tenant for s in self._pending)

    async def start(self) -> None:
        """Start the writer."""
        self._task = asyncio.create_task(self._loop(), name="response-log")

    async def stop(self) -> None:
        """Stop the writer after writing what is buffered."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        except Exception:
            log.exception("the response log's last batch was not written")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_s)
            try:
                await self.flush()
                if time.monotonic() >= self._next_expiry:
                    self._next_expiry = time.monotonic() + EXPIRE_EVERY_S
                    await self.expire()
            except Exception:
                log.exception("response log: writing failed; it is tried again at the next tick")

    async def flush(self) -> None:
        """Write every buffered record now."""
        async with self._flushing:
            batch = list(self._pending)
            self._pending.clear()
            self._metrics.response_log_pending.set(0)
            if not batch:
                return
            try:
                await self._thread.run(self._write, batch)
            except BaseException:
                # Put the batch back (in front of newer records) within the buffer's bound.
                room = max(0, self._settings.max_pending - len(self._pending))
                kept = batch[-room:] if room else []
                self._pending.extendleft(reversed(kept))
                lost = len(batch) - len(kept)
                if lost:
                    self._metrics.response_log_records.labels("dropped").inc(lost)
                self._metrics.response_log_pending.set(len(self._pending))
                raise
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("response log: a listener failed")

    def _write(self, batch: list[Served]) -> None:
        rows = [self._row(served) for served in batch]
        self._store.add_responses(rows)
        self._metrics.response_log_records.labels("written").inc(len(rows))
        for row in rows:
            for kind in ("prompt", "completion"):
                n = row[f"{kind}_tokens"]
                if n:
                    self._metrics.tokens.labels(row["tenant"], row["route"], kind).inc(n)

    def _row(self, served: Served) -> dict[str, Any]:
        prompt_tokens, completion_tokens = token_counts(served)
        limit = self._settings.max_text_chars
        keep = self._settings.keep_text != "off" and served.payload is not None
        return {
            "request_id": served.request_id,
            "tenant": served.tenant,
            "at": utc(served.at),
            "endpoint": served.endpoint,
            "route": served.route,
            "version": served.version,
            "variant": served.variant,
            "rollout_id": served.rollout_id,
            "status": served.status,
            "stream": served.stream,
            "latency_ms": served.latency_s * 1000,
            "ttft_ms": None if served.ttft_s is None else served.ttft_s * 1000,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "prompt_text": bounded(prompt_text(served.payload), limit) if keep else None,
            "answer_text": bounded(answer_text(served), limit) if keep else None,
        }

    async def expire(self) -> tuple[int, int]:
        """Delete old records and clear old texts now: (records deleted, texts cleared)."""
        now = utcnow()
        deleted, cleared = await asyncio.to_thread(
            self._store.expire,
            now - timedelta(days=self._settings.retention_days),
            now - timedelta(days=self._settings.text_retention_days),
        )
        if deleted or cleared:
            log.info("response log: %s records deleted, %s texts cleared", deleted, cleared)
        return deleted, cleared

    async def usage(
        self, since: datetime, until: datetime, by: list[UsageKey], limit: int
    ) -> list[UsageRow]:
        """Requests, errors and tokens per group (buffered records written first)."""
        await self.flush()
        return await asyncio.to_thread(self._store.usage, since, until, by, limit)

    def oldest_kept(self) -> datetime:
        """Records older than this have expired (feedback on them is refused)."""
        return utcnow() - timedelta(days=self._settings.retention_days)
