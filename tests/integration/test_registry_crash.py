"""`kill -9` the gateway while registrations are in flight: after a restart every version
is either fully registered (row and audit event) or absent, and registering again fills in
exactly what is missing. Runs on SQLite and on PostgreSQL, against the fake engine (the
registry is what is under test here, not vLLM)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.adapters import write_adapter
from gateway.testing.processes import Processes, postgres_database

NAMES = [f"crash{i:02d}" for i in range(24)]
# Bigger than the unit tests' tiny base, so hashing and writing take a little while.
BASE_CONFIG = {
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    with postgres_database("crash") as url:
        yield url


@pytest.fixture
def processes(tmp_path: Path, database_url: str) -> Iterator[Processes]:
    from gateway.registry.validation import BaseModelInfo

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(BASE_CONFIG))
    base = BaseModelInfo.from_config("crash-base", BASE_CONFIG)
    for index, name in enumerate(NAMES):
        write_adapter(tmp_path / "adapters" / name / "v1", rank=16, base=base, fill=index + 1.0)
    with Processes(tmp_path, database_url) as running:
        running.start_engine()
        yield running


def _register(url: str, name: str) -> int:
    body = {"name": name, "path": f"{name}/v1", "manifest": {"run": name}, "reason": "crash test"}
    try:
        return httpx.post(f"{url}/admin/adapters", json=body, timeout=30).status_code
    except httpx.HTTPError:
        return -1  # the gateway died under this request


def _versions(url: str) -> dict[str, list[dict[str, Any]]]:
    adapters = httpx.get(f"{url}/admin/adapters", timeout=10).json()["data"]
    return {a["name"]: a["versions"] for a in adapters}


def _registered_events(url: str) -> dict[str, int]:
    events = httpx.get(f"{url}/admin/audit", params={"limit": 10_000}, timeout=10).json()["data"]
    counts: dict[str, int] = {}
    for event in events:
        if event["action"] == "register":
            counts[event["adapter"]] = counts.get(event["adapter"], 0) + 1
    return counts


def test_killed_mid_registration_leaves_each_version_whole_or_absent(
    processes: Processes,
) -> None:
    first = processes.start_gateway()
    answered: list[int] = []
    lock = threading.Lock()

    def register(name: str) -> None:
        status = _register(first.url, name)
        with lock:
            answered.append(status)

    pool = ThreadPoolExecutor(max_workers=8)
    futures = [pool.submit(register, name) for name in NAMES]
    deadline = time.monotonic() + 60
    while len([s for s in answered if s > 0]) < 4 and time.monotonic() < deadline:
        time.sleep(0.002)
    first.kill()
    for future in futures:
        future.result(timeout=60)
    pool.shutdown()
    completed = [s for s in answered if s in (200, 201)]
    # The kill landed mid-way: some registrations finished, others never got an answer.
    assert 4 <= len(completed) < len(NAMES), answered

    gateway = processes.start_gateway()
    versions = _versions(gateway.url)
    events = _registered_events(gateway.url)
    # Whole or absent: every stored version has exactly its one audit event, and no event
    # speaks of a version that is not there.
    assert set(versions) == set(events)
    assert all(len(v) == 1 and v[0]["version"] == 1 for v in versions.values())
    assert all(count == 1 for count in events.values())
    assert len(versions) >= len(completed)
    for rows in versions.values():
        assert rows[0]["state"] == "registered"
        assert rows[0]["manifest"]["run"] == rows[0]["name"]

    # Registering everything again fills in exactly the missing ones.
    statuses = {name: _register(gateway.url, name) for name in NAMES}
    assert {n for n, s in statuses.items() if s == 200} == set(versions)
    assert {n for n, s in statuses.items() if s == 201} == set(NAMES) - set(versions)
    final = _versions(gateway.url)
    assert sorted(final) == NAMES
    assert all(len(v) == 1 for v in final.values())
    assert set(_registered_events(gateway.url).values()) == {1}
