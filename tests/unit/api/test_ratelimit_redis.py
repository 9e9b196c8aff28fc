"""Tenant buckets shared through a real Redis (127.0.0.1:6379; scripts/ensure_redis.sh)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.auth import ApiKeyMiddleware, KeyRing, hash_key
from gateway.api.ratelimit import RedisRateLimiter
from gateway.config import TenantKey
from gateway.metrics import Metrics
from gateway.testing.server import free_port

REDIS = "redis://127.0.0.1:6379/0"
KEY = "lgw-alice-secret"


def tenant(**limits: object) -> TenantKey:
    return TenantKey.model_validate({"name": "alice", "key_sha256": hash_key(KEY), **limits})


@pytest.fixture
def prefix() -> str:
    # Each test its own keys, so runs and workers never share a bucket.
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def two(prefix: str) -> AsyncIterator[tuple[RedisRateLimiter, RedisRateLimiter, Metrics]]:
    metrics = Metrics()
    tenants = [tenant(rate_per_minute=6, burst=5)]
    first = RedisRateLimiter(REDIS, tenants, metrics, prefix)
    second = RedisRateLimiter(REDIS, tenants, Metrics(), prefix)
    try:
        yield first, second, metrics
    finally:
        await first.close()
        await second.close()


async def test_two_limiters_on_one_redis_share_the_burst(
    two: tuple[RedisRateLimiter, RedisRateLimiter, Metrics],
) -> None:
    first, second, _ = two
    waits = []
    for i in range(10):
        waits.append(await (first if i % 2 else second).take("alice"))

    granted = [w for w in waits if w == 0.0]
    assert len(granted) == 5  # the burst, once, not once per limiter
    refused = [w for w in waits if w > 0]
    # 6 a minute: a token every 10 s; the first refusal waits about that long.
    assert 9.0 < refused[0] <= 10.0


async def test_a_tenant_without_a_rate_never_touches_redis(prefix: str) -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", [tenant()], Metrics(), prefix)
    try:
        assert [await limiter.take("alice") for _ in range(50)] == [0.0] * 50
    finally:
        await limiter.close()


async def test_the_bucket_refills_at_the_rate(prefix: str) -> None:
    limiter = RedisRateLimiter(REDIS, [tenant(rate_per_minute=600, burst=1)], Metrics(), prefix)
    try:
        assert await limiter.take("alice") == 0.0
        wait = await limiter.take("alice")
        assert 0.0 < wait <= 0.1
        await asyncio.sleep(wait + 0.02)
        assert await limiter.take("alice") == 0.0
    finally:
        await limiter.close()


async def test_unreachable_redis_falls_back_to_this_process(prefix: str) -> None:
    metrics = Metrics()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    limiter = RedisRateLimiter(dead, [tenant(rate_per_minute=60, burst=2)], metrics, prefix)
    try:
        waits = [await limiter.take("alice") for _ in range(3)]
    finally:
        await limiter.close()

    assert waits[:2] == [0.0, 0.0] and waits[2] > 0
    assert metrics.registry.get_sample_value("gateway_rate_limit_fallbacks_total") == 3


async def test_the_middleware_answers_429_from_the_shared_bucket(prefix: str) -> None:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    inner = Starlette(routes=[Route("/v1/chat/completions", ok, methods=["POST"])])
    tenants = [tenant(rate_per_minute=60, burst=1)]
    metrics = Metrics()
    limiter = RedisRateLimiter(REDIS, tenants, metrics, prefix)
    app = ApiKeyMiddleware(inner, KeyRing(None, tenants), metrics, limiter=limiter)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
    headers = {"authorization": f"Bearer {KEY}"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            first = await client.post("/v1/chat/completions", headers=headers)
            second = await client.post("/v1/chat/completions", headers=headers)
    finally:
        await limiter.close()

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert 0 < int(second.headers["retry-after"]) <= 1
