"""Two real vLLM engines behind one gateway under steady mixed traffic (base model and
adapters, whole answers and streams); one is killed with SIGKILL and started again.

No request that started after the kill fails (the first ones to find it dead never reached
it and go to the other replica); the gateway takes it out of rotation before it is back,
and once its health check passes puts it back with the adapters it held, and it serves
again. The timings are reported by `loadtest/replicas.py` (docs/benchmarks.md)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.drill import load_everywhere, run_drill
from gateway.testing.server import free_port
from gateway.upstream.launcher import EngineProcess, EngineSpec, engine_plugin_env
from tests.integration.conftest import (
    EngineAssets,
    GatewayProcess,
    SharedEngine,
    give_back_demo_adapters,
    start_gateway,
)

MODELS = ("base", "pirate", "french", "base", "shout")


@pytest.fixture
def victim(engine_assets: EngineAssets, tmp_path: Path) -> Iterator[EngineProcess]:
    spec = EngineSpec(
        model_dir=engine_assets.model_dir,
        dtype=engine_assets.dtype,
        served_name="base",
        port=free_port(),
        max_loras=3,
        omp_threads_bind="1",
        log_file=tmp_path / "victim.log",
        # Eager: no compile at either start (minutes on a slow CPU; its speed is not tested).
        extra_env=engine_plugin_env("grouped", compile_lora=False),
        start_timeout_s=900.0,
    )
    engine = EngineProcess(spec)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def gateway(
    engine_assets: EngineAssets,
    shared_engine: SharedEngine,
    victim: EngineProcess,
    tmp_path: Path,
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path,
        engine_assets,
        GATEWAY_UPSTREAM_URLS=f"{shared_engine.url},{victim.url}",
        GATEWAY_BASE_MODEL_NAME="base",
        GATEWAY_HEALTH_INTERVAL_S="0.5",
    )
    try:
        process.wait_ready(timeout_s=300)
        yield process
    finally:
        process.stop()
        give_back_demo_adapters(shared_engine, engine_assets)


def test_a_killed_replica_costs_no_request_and_comes_back_by_itself(
    gateway: GatewayProcess, victim: EngineProcess
) -> None:
    def kill() -> None:
        assert victim.pid is not None
        os.killpg(victim.pid, signal.SIGKILL)

    def restart() -> None:
        victim.stop(grace_s=0.0)  # reaps the killed group
        victim.start()

    # Each adapter on both replicas (as `load` does for a version about to take traffic), so
    # the victim holds adapters when it dies, whichever replica affinity would pick.
    load_everywhere(gateway.url, [("pirate", 1), ("french", 1), ("shout", 1)])
    result = run_drill(
        gateway.url, victim.url, kill, restart, MODELS, warm_s=8.0, after_s=8.0, workers=4
    )
    summary = result.summary()

    assert result.failed_started_after_kill() == [], summary
    assert summary["ok"] > 20 and summary["streams"] > 0, summary
    assert result.ejected_at is not None and result.ejected_at < result.engine_healthy_at, summary
    assert result.resident_before, summary  # it held adapters when it died ...
    assert result.readmitted_at is not None, summary  # ... and got them back unasked
    assert set(result.resident_before) <= set(result.resident_after), summary
    assert result.served_after_readmission > 0, summary
