from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from gateway.metrics import Metrics
from gateway.testing.server import free_port
from gateway.upstream.launcher import (
    EngineProcess,
    EngineSpec,
    EngineStartError,
    engine_plugin_env,
)
from gateway.upstream.supervisor import (
    EngineSupervisor,
    kill_stale_engine,
    read_pid_file,
    write_pid_file,
)

FAKE = (sys.executable, "-m", "gateway.testing.fake_vllm")


def spec(tmp_path: Path, **kwargs: object) -> EngineSpec:
    options: dict[str, object] = {"launcher": FAKE, **kwargs}
    return EngineSpec(
        model_dir=tmp_path,
        served_name="base",
        log_file=tmp_path / "engine.log",
        port=free_port(),
        **options,  # type: ignore[arg-type]
    )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_of(pid_file: Path) -> int:
    record = read_pid_file(pid_file)
    assert record is not None
    return record[0]


def test_command_carries_lora_flags_and_adapters(tmp_path: Path) -> None:
    s = spec(tmp_path, max_loras=3, lora_modules={"pirate--v1": tmp_path / "p"})
    cmd = s.command()
    assert cmd[: len(FAKE) + 2] == [*FAKE, "serve", str(tmp_path)]
    assert cmd[cmd.index("--max-loras") + 1] == "3"
    assert "--enable-lora" in cmd
    assert cmd[cmd.index("--lora-modules") + 1] == f"pirate--v1={tmp_path / 'p'}"
    env = s.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_command_without_lora_drops_every_lora_flag(tmp_path: Path) -> None:
    s = spec(tmp_path, enable_lora=False, lora_modules={"pirate--v1": tmp_path / "p"})
    cmd = s.command()
    assert not [arg for arg in cmd if arg.startswith("--") and "lora" in arg]
    assert not [arg for arg in cmd if arg.startswith("pirate--v1=")]


def test_plugin_env_selects_the_lora_ops_and_compilation(tmp_path: Path) -> None:
    env = spec(tmp_path, extra_env=engine_plugin_env("vllm", compile_lora=False)).environment()
    assert env["LORA_GATEWAY_LORA_OPS"] == "vllm"
    assert env["LORA_GATEWAY_LORA_COMPILE"] == "0"
    assert engine_plugin_env("grouped", compile_lora=True) == {
        "LORA_GATEWAY_LORA_OPS": "grouped",
        "LORA_GATEWAY_LORA_COMPILE": "1",
    }


def test_engine_starts_healthy_and_stops_its_whole_group(tmp_path: Path) -> None:
    engine = EngineProcess(spec(tmp_path))
    engine.start()
    pid = engine.pid
    try:
        assert pid is not None
        assert httpx.get(f"{engine.url}/health").status_code == 200
    finally:
        engine.stop()
    assert not group_alive(pid)
    assert "starting:" in (tmp_path / "engine.log").read_text()


def test_hung_start_is_killed_after_timeout(tmp_path: Path) -> None:
    # A start-up that never becomes healthy and ignores SIGTERM.
    hang = (
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    )
    engine = EngineProcess(spec(tmp_path, launcher=hang, start_timeout_s=1.0))
    engine.spawn()
    pid = engine.pid
    assert pid is not None
    with pytest.raises(EngineStartError, match="not healthy"):
        engine.wait_healthy()
    assert not group_alive(pid)


def test_engine_that_exits_at_start_reports_it(tmp_path: Path) -> None:
    crash = (sys.executable, "-c", "raise SystemExit(3)")
    engine = EngineProcess(spec(tmp_path, launcher=crash))
    with pytest.raises(EngineStartError, match="code 3"):
        engine.start()


async def test_supervisor_restarts_a_killed_engine(tmp_path: Path) -> None:
    metrics = Metrics()
    pid_file = tmp_path / "engine.pid"
    supervisor = EngineSupervisor(EngineProcess(spec(tmp_path)), metrics, pid_file)
    await supervisor.start()
    try:
        await asyncio.wait_for(supervisor.ready.wait(), timeout=30)
        first = pid_of(pid_file)
        os.killpg(first, signal.SIGKILL)
        for _ in range(300):
            await asyncio.sleep(0.1)
            if supervisor.ready.is_set() and pid_of(pid_file) != first:
                break
        second = pid_of(pid_file)
        assert second != first
        assert supervisor.ready.is_set()
        assert metrics.registry.get_sample_value("gateway_engine_restarts_total") == 1
    finally:
        await supervisor.stop()
    assert not group_alive(second)
    assert not pid_file.exists()


def test_stale_engine_from_a_killed_gateway_is_cleaned_up(tmp_path: Path) -> None:
    orphan = EngineProcess(spec(tmp_path))
    orphan.start()
    try:
        pgid = orphan.pid
        assert pgid is not None
        pid_file = tmp_path / "engine.pid"
        write_pid_file(pid_file, pgid, orphan.spec.command())
        kill_stale_engine(pid_file)
        # Reap it (it is our child here) and check it died of SIGKILL.
        assert orphan.wait_exit() == -signal.SIGKILL
        assert not pid_file.exists()
    finally:
        orphan.stop()


def test_stale_pid_of_an_unrelated_process_is_left_alone(tmp_path: Path) -> None:
    pid_file = tmp_path / "engine.pid"
    # Our own group, recorded with an engine's command line: the pid was reused.
    write_pid_file(pid_file, os.getpgid(0), spec(tmp_path).command())
    kill_stale_engine(pid_file)
    assert group_alive(os.getpgid(0))
    assert not pid_file.exists()
