"""The delivery worker: sends outbox messages to their subscribers, at least once.

A loop wakes every `poll_s`, or at once when `wake()` says new messages were committed,
claims the due messages it has room for (`gateway.hooks.claims`: a lease per message, safe
with any number of replicas) and sends each in a task of its own. At most
`per_subscription` attempts run per subscriber and `max_in_flight` in all; each has its own
deadline (`attempt_timeout_s`, the answer included), so a receiver that hangs holds its own
slots for one timeout and never delays another subscriber or the gateway's requests.

An attempt POSTs the stored body, signed for that attempt (`gateway.hooks.signing`). A 2xx
answer delivers the message. Anything else (another status, a timeout, no connection) is
tried again after an exponential back-off with full jitter (a uniform wait between 0 and
`min(max_backoff_s, base * 2 ** (failures - 1))`); the time is stored in the message's row,
so the schedule outlives restarts. When the next try would fall past the message's
deadline, it is `dead`. A 410 Gone is a failure like any other: removing a subscription is
left to an operator (`DELETE /admin/hooks/{id}`), not to what a receiver answers.

Secrets stay in memory between claim and send: they are never logged, and neither are
URLs (they may carry a receiver's token in their query); logs name the subscription's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from gateway.background.tasks import cancel_and_wait
from gateway.config import HookSettings
from gateway.hooks.claims import Attempt, Claim, Claims, Outcome
from gateway.hooks.outbox import outbox_stats
from gateway.hooks.signing import signed_headers
from gateway.metrics import Metrics

log = logging.getLogger(__name__)
# Longer than the attempt itself: the lease also covers writing its outcome.
LEASE_MARGIN_S = 5.0
# How much of a refusing receiver's answer is kept with the attempt.
SNIPPET_BYTES = 200
STATS_EVERY_S = 1.0


@dataclass(frozen=True)
class Report:
    """One attempt and what became of its message."""

    message_id: str
    attempt: Attempt
    outcome: Outcome


class HookDelivery:
    """Claims due outbox messages and sends them; one per process, any number per database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        metrics: Metrics,
        client: httpx.AsyncClient,
        settings: HookSettings,
        *,
        backoff_base_s: float = 1.0,
        backoff_factor: float = 2.0,
        stop_grace_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = sessions
        self._claims = Claims(sessions)
        self._metrics = metrics
        self._client = client
        self._settings = settings
        self._base = backoff_base_s
        self._factor = backoff_factor
        self._grace = stop_grace_s
        self._random = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[Report | None], int] = {}
        self._busy: Counter[int] = Counter()
        self._next_stats = 0.0

    @property
    def lease_s(self) -> float:
        """How long a claim keeps a message from other workers."""
        return self._settings.attempt_timeout_s + LEASE_MARGIN_S

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop (messages already due are sent at once)."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="hook-delivery")

    async def stop(self) -> None:
        """Stop claiming; give attempts in flight `stop_grace_s` to finish, cancel the rest
        (their leases run out and another worker sends them again)."""
        await cancel_and_wait(self._task)
        self._task = None
        tasks = set(self._in_flight)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def wake(self) -> None:
        """New messages were committed: look now (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._woken.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._woken.set)

    async def deliver_now(self, message_id: str) -> Report | None:
        """Claim one pending message and send it here, now (outside the caps: an operator's
        single test); None when it is not pending."""
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.lease_s)
        claim = await asyncio.to_thread(self._claims.claim_one, message_id, lease)
        if claim is None:
            return None
        return await self._send(claim)

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            try:
                await self._tick()
            except Exception:
                log.exception("webhook delivery: reading the outbox failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_s):
                    await self._woken.wait()

    async def _tick(self) -> None:
        if time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + STATS_EVERY_S
            stats = await asyncio.to_thread(outbox_stats, self._sessions)
            self._metrics.hook_pending.set(stats.pending)
            self._metrics.hook_dead.set(stats.dead)
        room = self._settings.max_in_flight - len(self._in_flight)
        if room <= 0:
            return
        now = datetime.now(UTC)
        lease = timedelta(seconds=self.lease_s)
        batch = await asyncio.to_thread(
            self._claims.claim,
            now,
            now + lease,
            limit=room,
            busy=dict(self._busy),
            per_subscription=self._settings.per_subscription,
            # A retry due just before its deadline still goes out; one found much later
            # (no worker ran for that long) is given up on unsent.
            stale_before=now - lease,
        )
        for late in batch.expired:
            self._metrics.hook_deliveries.labels(late.event, "dead").inc()
            log.warning(
                "webhook %s (%s) to subscription %d is dead: its deadline passed unsent",
                late.message_id,
                late.event,
                late.subscription_id,
            )
        for claim in batch.claims:
            task = asyncio.create_task(self._send(claim), name=f"hook-{claim.message_id}")
            self._in_flight[task] = claim.subscription_id
            self._busy[claim.subscription_id] += 1
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Report | None]) -> None:
        sub = self._in_flight.pop(task)
        self._busy[sub] -= 1
        if self._busy[sub] <= 0:
            del self._busy[sub]
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
        # A slot is free: whatever waited for it can go.
        self._woken.set()

    # -- one attempt -----------------------------------------------------------------------

    async def _send(self, claim: Claim) -> Report | None:
        attempt = await self._post(claim)
        retry_at = datetime.now(UTC) + timedelta(seconds=self.backoff_s(claim.attempts + 1))
        try:
            outcome = await asyncio.to_thread(self._claims.finish, claim, attempt, retry_at)
        except Exception:
            # The lease runs out and the message is sent again.
            log.exception("webhook %s: recording the attempt failed", claim.message_id)
            return None
        self._count(claim, attempt, outcome)
        return Report(claim.message_id, attempt, outcome)

    async def _post(self, claim: Claim) -> Attempt:
        at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        timeout = self._settings.attempt_timeout_s
        try:
            headers = signed_headers(claim.secret, claim.message_id, claim.body, at)
            async with asyncio.timeout(timeout):
                async with self._client.stream(
                    "POST", claim.url, content=claim.body.encode(), headers=headers
                ) as response:
                    status = response.status_code
                    if not 200 <= status < 300:
                        error = f"HTTP {status}{await _snippet(response)}"
        except TimeoutError:
            error = f"no answer within {timeout:g} s"
        except Exception as exc:  # whatever a receiver does, it is this attempt's failure
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency_ms = (time.perf_counter() - started) * 1000
        return Attempt(at=at, status=status, latency_ms=latency_ms, error=error)

    def backoff_s(self, failures: int) -> float:
        """The wait before the next try after `failures` failed attempts (full jitter)."""
        ceiling = self._base * self._factor ** min(max(failures - 1, 0), 64)
        return self._random.uniform(0.0, min(self._settings.max_backoff_s, ceiling))

    def _count(self, claim: Claim, attempt: Attempt, outcome: Outcome) -> None:
        metrics = self._metrics
        metrics.hook_attempt_seconds.observe(attempt.latency_ms / 1000)
        if attempt.ok:
            metrics.hook_attempts.labels("ok").inc()
        else:
            metrics.hook_attempts.labels("retry" if outcome is Outcome.RETRY else "failed").inc()
        if outcome is Outcome.DELIVERED:
            metrics.hook_deliveries.labels(claim.event, "delivered").inc()
            age = (datetime.now(UTC) - claim.created_at).total_seconds()
            metrics.hook_delivery_seconds.observe(max(age, 0.0))
        elif outcome is Outcome.DEAD:
            metrics.hook_deliveries.labels(claim.event, "dead").inc()
            log.warning(
                "webhook %s (%s) to subscription %d is dead after %d attempts: %s",
                claim.message_id,
                claim.event,
                claim.subscription_id,
                claim.attempts + 1,
                attempt.error,
            )


async def _snippet(response: httpx.Response) -> str:
    """The start of a refusal's body, for the attempt's error (never more than a chunk)."""
    kept = b""
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) >= SNIPPET_BYTES:
            break
    text = kept[:SNIPPET_BYTES].decode("utf-8", "replace").strip()
    return f": {' '.join(text.split())}" if text else ""
