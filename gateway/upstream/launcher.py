"""Start and stop a vLLM engine as a managed subprocess.

The engine runs in its own process group so that a stop reaches every process it
forked (API server and engine core). A hung start-up may ignore SIGTERM, so every
stop ends with SIGKILL after a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.engine.vllm_plugin import LORA_COMPILE_ENV, LORA_OPS_ENV

log = logging.getLogger(__name__)


def engine_plugin_env(lora_ops: str, *, compile_lora: bool) -> dict[str, str]:
    """The environment that selects the engine plugin's LoRA ops (`gateway.engine.vllm_plugin`)."""
    return {
        LORA_OPS_ENV: lora_ops,
        LORA_COMPILE_ENV: "1" if compile_lora else "0",
    }


class EngineStartError(RuntimeError):
    """The engine exited or did not become healthy in time."""


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start one vLLM server."""

    model_dir: Path
    served_name: str
    log_file: Path
    host: str = "127.0.0.1"
    port: int = 8001
    # False: serve the base model alone (no `--enable-lora`), e.g. as a benchmark reference.
    enable_lora: bool = True
    max_loras: int = 4
    max_lora_rank: int = 16
    max_model_len: int = 1024
    max_num_seqs: int = 64
    lora_modules: Mapping[str, Path] = field(default_factory=dict)
    kvcache_gib: int = 1
    omp_threads_bind: str = "auto"
    quantization: str | None = None
    dtype: str | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 240.0
    # How to start vLLM's CLI; tests swap in a fake engine with the same arguments.
    launcher: tuple[str, ...] = (sys.executable, "-m", "gateway.engine.vllm_entry")

    @property
    def url(self) -> str:
        """Base URL of the engine's HTTP server."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The argv that starts vLLM's OpenAI server for this spec."""
        cmd = [
            *self.launcher,
            "serve",
            str(self.model_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--disable-uvicorn-access-log",
        ]
        if self.enable_lora:
            cmd += ["--enable-lora", "--max-loras", str(self.max_loras)]
            cmd += ["--max-lora-rank", str(self.max_lora_rank)]
        if self.quantization:
            cmd += ["--quantization", self.quantization]
        if self.dtype:
            cmd += ["--dtype", self.dtype]
        if self.lora_modules and self.enable_lora:
            cmd.append("--lora-modules")
            cmd += [f"{name}={path}" for name, path in self.lora_modules.items()]
        cmd += list(self.extra_args)
        return cmd

    def environment(self) -> dict[str, str]:
        """The process environment: offline, no telemetry, runtime LoRA updates on."""
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self.kvcache_gib),
                "VLLM_CPU_OMP_THREADS_BIND": self.omp_threads_bind,
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            }
        )
        env.update(self.extra_env)
        return env


class EngineProcess:
    """One managed vLLM server process (group)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the engine."""
        return self.spec.url

    @property
    def pid(self) -> int | None:
        """Process id of the engine's main process, if started."""
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        """Whether the engine's main process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        """Start the process without waiting for it to become healthy."""
        if self.running():
            return
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_file.open("ab") as logf:
            logf.write(f"\n=== starting: {' '.join(self.spec.command())}\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                self.spec.command(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.spec.environment(),
                start_new_session=True,
            )
        log.info(
            "engine started pid=%s url=%s log=%s", self._proc.pid, self.url, self.spec.log_file
        )

    def wait_exit(self) -> int | None:
        """Block until the engine's main process exits; return its exit code."""
        proc = self._proc
        return proc.wait() if proc is not None else None

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Block until GET /health answers 200; raise EngineStartError on exit or timeout."""
        deadline = time.monotonic() + (timeout_s or self.spec.start_timeout_s)
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running():
                    code = self._proc.returncode if self._proc else None
                    raise EngineStartError(
                        f"engine exited with code {code} during start-up; see {self.spec.log_file}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        # A hung start-up often ignores SIGTERM: do not wait long before SIGKILL.
        self.stop(grace_s=3.0)
        raise EngineStartError(
            f"engine not healthy after {timeout_s or self.spec.start_timeout_s:.0f}s; "
            f"see {self.spec.log_file}"
        )

    def start(self) -> None:
        """Spawn the engine and wait until it is healthy."""
        self.spawn()
        self.wait_healthy()

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after the grace period."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("engine pid=%s ignored SIGTERM; killing", proc.pid)
        # Children (the engine core) may outlive the main process: always sweep the group.
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("engine pid=%s did not die after SIGKILL", proc.pid)
        self._proc = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("no permission to signal process group %s", pgid)
