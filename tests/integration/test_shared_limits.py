"""Two gateway processes on one PostgreSQL registry and one Redis (the fake engine behind):
a tenant limited to N requests a minute gets N across both, not 2N, and a gateway killed
with `kill -9` and started again does not hand the tenant a fresh burst. Without Redis each
process keeps its own bucket: the same traffic gets 2N (the documented per-process mode)."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.api.auth import hash_key
from gateway.testing.adapters import write_tiny_tree
from gateway.testing.processes import Processes, postgres_database

KEY = "lgw-shared-limit-tenant"
N = 6  # requests a minute, all of them at once (burst N): a new one every 10 s
REFILL_S = 60.0 / N


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    write_tiny_tree(tmp_path, "pirate", versions=1)
    tenants = [{"name": "alice", "key_sha256": hash_key(KEY), "rate_per_minute": N, "burst": N}]
    env = {"GATEWAY_TENANT_KEYS": json.dumps(tenants), "GATEWAY_REGISTRY_POLL_S": "0.2"}
    with postgres_database("limits") as url, Processes(tmp_path, url, env=env) as running:
        running.start_engine()
        yield running


def _send(urls: list[str], count: int) -> list[int]:
    """`count` chat requests as the tenant, taking turns between the gateways."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {KEY}"}
    statuses = []
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            url = urls[i % len(urls)]
            response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            assert response.status_code in (200, 429), response.text
            statuses.append(response.status_code)
    return statuses


def _most_granted(started: float) -> int:
    """The burst plus every token refilled since `started`."""
    return N + math.floor((time.monotonic() - started) / REFILL_S)


def test_a_shared_limit_holds_across_gateways_and_a_kill(processes: Processes) -> None:
    redis = {"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"}
    redis["GATEWAY_REDIS_PREFIX"] = f"test-{uuid.uuid4().hex}"
    a = processes.start_gateway("a", env=redis)
    b = processes.start_gateway("b", env=redis)
    started = time.monotonic()

    statuses = _send([a.url, b.url], 4 * N)

    granted = statuses.count(200)
    assert N <= granted <= _most_granted(started)
    assert granted < 2 * N
    assert statuses[:N] == [200] * N  # the burst is served first, from either gateway

    a.kill()
    a = processes.start_gateway("a", env=redis)
    after = _send([a.url, b.url], 2 * N)

    # A gateway that lost its process state must not give the tenant its burst again.
    assert granted + after.count(200) <= _most_granted(started)


def test_without_redis_each_gateway_limits_on_its_own(processes: Processes) -> None:
    a = processes.start_gateway("a")
    b = processes.start_gateway("b")
    started = time.monotonic()

    granted = _send([a.url, b.url], 4 * N).count(200)

    assert 2 * N <= granted <= 2 * _most_granted(started)
