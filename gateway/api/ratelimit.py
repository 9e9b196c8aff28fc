"""Tenant rate limits: a token bucket per tenant, in this process or shared through Redis.

Both limiters have the same semantics: `burst` requests at once, refilled at
`rate_per_minute`; a refused request is told how long until a token is there. With
`GATEWAY_REDIS_URL` set, every gateway replica takes from the same bucket (a Lua script
updates it atomically, on Redis's own clock), so a tenant limited to N a minute gets N
across all replicas, not N per replica. When Redis cannot be reached, each replica falls
back to its own bucket (it keeps serving; the limit holds per replica until Redis is back),
and says so in its log and in `gateway_rate_limit_fallbacks_total`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.config import TenantKey
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# KEYS[1] the bucket; ARGV: tokens a second, capacity. Returns the seconds to wait as a
# string ("0" when a token was taken). TIME is Redis's clock, the same for every replica.
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(data[1]) or capacity
local updated = tonumber(data[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return tostring(wait)
"""


def capacity_of(tenant: TenantKey) -> float:
    """The bucket's size: `burst`, else one second's worth of the rate (at least one)."""
    assert tenant.rate_per_minute is not None
    if tenant.burst is not None:
        return float(tenant.burst)
    return float(max(1, math.ceil(tenant.rate_per_minute / 60.0)))


class TokenBucket:
    """One tenant's request budget: `capacity` at once, refilled at `rate_per_s`."""

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        # No await in here, so concurrent requests on the event loop cannot interleave.
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


class RateLimiter(Protocol):
    """Takes one request from a tenant's budget."""

    async def take(self, tenant: str) -> float:
        """0.0 when granted, else the seconds to wait."""

    async def close(self) -> None:
        """Release connections."""


class LocalRateLimiter:
    """A token bucket per tenant that has a rate, in this gateway process."""

    def __init__(self, tenants: Sequence[TenantKey], clock: Clock = time.monotonic) -> None:
        self._buckets = {
            t.name: TokenBucket(t.rate_per_minute / 60.0, capacity_of(t), clock)
            for t in tenants
            if t.rate_per_minute is not None
        }

    async def take(self, tenant: str) -> float:
        """Take one request of `tenant`'s budget: 0.0 when granted, else seconds to wait."""
        return self.take_now(tenant)

    def take_now(self, tenant: str) -> float:
        """`take`, without waiting for anything."""
        bucket = self._buckets.get(tenant)
        return 0.0 if bucket is None else bucket.take()

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    """The tenants' buckets in Redis, shared by every gateway replica that uses it."""

    def __init__(
        self,
        url: str,
        tenants: Sequence[TenantKey],
        metrics: Metrics,
        prefix: str = "lora-gateway",
        timeout_s: float = 0.25,
    ) -> None:
        import redis.asyncio as redis

        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script = self._client.register_script(_TAKE)
        self._limits = {
            t.name: (t.rate_per_minute / 60.0, capacity_of(t))
            for t in tenants
            if t.rate_per_minute is not None
        }
        self._prefix = prefix
        self._metrics = metrics
        self._fallback = LocalRateLimiter(tenants)
        self._failing = False

    def key(self, tenant: str) -> str:
        """The Redis key of `tenant`'s bucket."""
        return f"{self._prefix}:rate:{tenant}"

    async def take(self, tenant: str) -> float:
        """Take one request of `tenant`'s shared budget; this process's own when Redis is
        unreachable."""
        limit = self._limits.get(tenant)
        if limit is None:
            return 0.0
        import redis.exceptions

        try:
            wait = await self._script(keys=[self.key(tenant)], args=[limit[0], limit[1]])
        except (redis.exceptions.RedisError, OSError) as exc:
            if not self._failing:
                log.error("rate limits: Redis unreachable, limiting per process: %s", exc)
            self._failing = True
            self._metrics.rate_limit_fallbacks.inc()
            return self._fallback.take_now(tenant)
        if self._failing:
            log.warning("rate limits: Redis is back; limits are shared again")
            self._failing = False
        return float(wait)

    async def close(self) -> None:
        await self._client.aclose()
