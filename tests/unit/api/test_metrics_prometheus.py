"""The gateway's metrics as a real Prometheus server scrapes and queries them.

A gateway (fake engine, real classifier) serves on a loopback port; a Prometheus server
(`scripts/ensure_prometheus.sh` installs it) scrapes it every second; the test sends `auto`
requests and reads the counts back through Prometheus' query API.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE
from gateway.testing.server import free_port, serve_in_loop

TABLE = """\
threshold: 0.35
routes:
  - name: sea
    adapter: pirate
    utterances:
      - Tell me about sailing ships on the open ocean
      - How do sailors navigate at sea?
default:
  utterances:
    - How do I sort a list in Python?
    - What is the derivative of x squared?
"""
DEADLINE_S = 45.0


@pytest.fixture
async def gateway_url(settings: Settings) -> AsyncIterator[str]:
    app = create_app(settings, metrics=Metrics(), base_info=TINY_BASE)
    async with serve_in_loop(app) as url:
        yield url


@pytest.fixture
def prometheus(gateway_url: str, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: run scripts/ensure_prometheus.sh"
    target = gateway_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: gateway\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def query(client: httpx.AsyncClient, prometheus: str, expression: str) -> list[Any]:
    response = await client.get(f"{prometheus}/api/v1/query", params={"query": expression})
    response.raise_for_status()
    result: list[Any] = response.json()["data"]["result"]
    return result


async def wait_for_value(
    client: httpx.AsyncClient, prometheus: str, expression: str, expected: float
) -> None:
    """Poll Prometheus until `expression` has one sample equal to `expected`."""
    deadline = time.monotonic() + DEADLINE_S
    seen: list[Any] = []
    while time.monotonic() < deadline:
        try:
            seen = await query(client, prometheus, expression)
        except httpx.HTTPError:
            seen = []
        if len(seen) == 1 and float(seen[0]["value"][1]) == expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{expression}: expected {expected}, Prometheus has {seen}")


def chat(text: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


async def test_prometheus_scrapes_the_routing_metrics(gateway_url: str, prometheus: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        put = await client.put(f"{gateway_url}/admin/routes", content=TABLE)
        assert put.status_code == 200, put.text
        sea = ["How do sailors cross the ocean?", "What is life like on a ship at sea?"]
        for text in [*sea, "Write a SQL query that counts rows per customer"]:
            response = await client.post(f"{gateway_url}/v1/chat/completions", json=chat(text))
            assert response.status_code == 200, response.text
        await wait_for_value(client, prometheus, "up{job='gateway'}", 1)
        await wait_for_value(
            client, prometheus, 'gateway_route_decisions_total{route="sea",method="embedding"}', 2
        )
        await wait_for_value(
            client, prometheus, 'sum(gateway_route_decisions_total{route="default"})', 1
        )
        await wait_for_value(client, prometheus, "sum(gateway_route_fallbacks_total)", 1)
        await wait_for_value(
            client, prometheus, 'gateway_route_classify_seconds_count{method="embedding"}', 2
        )
        await wait_for_value(client, prometheus, "gateway_route_table_id", 1)
        # Served by the adapter the route named, as the request metrics say.
        await wait_for_value(
            client,
            prometheus,
            'sum(gateway_requests_total{adapter="pirate",status_class="2xx"})',
            2,
        )
        latency = await query(
            client, prometheus, 'gateway_route_classify_seconds_sum{method="embedding"}'
        )
        assert 0 < float(latency[0]["value"][1]) < 5


async def test_prometheus_scrapes_the_rollout_metrics(gateway_url: str, prometheus: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        plan = {"shadow": {"sample_rate": 1.0}, "canary": [{"weight": 50}, {"weight": 100}]}
        started = await client.post(
            "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": plan}
        )
        assert started.status_code == 201, started.text
        for index in range(3):
            body = {
                "model": "pirate",
                "user": f"u{index}",
                "messages": [{"role": "user", "content": "hi"}],
            }
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        await wait_for_value(
            client, prometheus, 'gateway_rollout_stage{route="pirate",stage="shadow"}', 1
        )
        await wait_for_value(
            client, prometheus, 'gateway_rollout_requests_total{route="pirate",variant="stable"}', 3
        )
        await wait_for_value(
            client, prometheus, 'gateway_shadow_requests_total{route="pirate",outcome="sent"}', 3
        )
        await wait_for_value(
            client,
            prometheus,
            'gateway_shadow_requests_total{route="pirate",outcome="completed"}',
            3,
        )
        advanced = await client.post("/admin/rollouts/pirate/advance")
        assert advanced.status_code == 200, advanced.text
        await wait_for_value(
            client, prometheus, 'gateway_rollout_canary_weight_percent{route="pirate"}', 50
        )
        await wait_for_value(
            client, prometheus, 'gateway_rollout_stage{route="pirate",stage="canary"}', 1
        )
        rolled = await client.post("/admin/rollouts/pirate/rollback", json={"reason": "test"})
        assert rolled.status_code == 200, rolled.text
        await wait_for_value(
            client, prometheus, 'gateway_rollout_stage{route="pirate",stage="rolled_back"}', 1
        )
        await wait_for_value(
            client, prometheus, 'gateway_rollout_canary_weight_percent{route="pirate"}', 0
        )
