"""A gateway on this machine for the pipeline's demo and example runs: `lora-gateway serve`
on the embedded engine, with its state and adapter root under a work directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    """Wait for `url` to answer 200 while `proc` runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} was not ready within {timeout_s:.0f} s")


class LocalGateway:
    """Start a gateway (and its engine) on free ports; stop both on exit."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_ENGINE__PORT": str(free_port()),
            "GATEWAY_STATE_DIR": str(workdir / "state"),
            "GATEWAY_ADAPTER_ROOT": str(workdir / "adapters"),
            "GATEWAY_SEED_ADAPTERS": "false",
            "LORA_GATEWAY_URL": self.url,
            "COLUMNS": "200",
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.previous_handler: Any = None

    def spawn(self, args: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        """Start a Python module of this repository beside the gateway, logging to `log`."""
        with (self.workdir / log).open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                env={**self.env, **env},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> LocalGateway:
        (self.workdir / "adapters").mkdir(parents=True, exist_ok=True)
        # SIGTERM takes Ctrl-C's path while the gateway runs, so that a script stopped with
        # `kill` stops its gateway and engine too instead of leaving them running.
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
        gateway = self.spawn(["-m", "gateway.cli", "serve"], "gateway.log")
        try:
            # A first engine start compiles the model: minutes on a small CPU.
            wait_ok(f"{self.url}/readyz", gateway, 900, "the gateway")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM every process started here, SIGKILL what does not stop within a minute."""
        if self.previous_handler is not None:
            signal.signal(signal.SIGTERM, self.previous_handler)
            self.previous_handler = None
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def adapters(self, *args: str, check: bool = True) -> int:
        """`python -m adapters ARGS` against this gateway, its output shown."""
        done = subprocess.run([sys.executable, "-m", "adapters", *args], env=self.env, cwd=REPO)
        if check and done.returncode != 0:
            raise SystemExit(f"python -m adapters {args[0]} failed ({done.returncode})")
        return done.returncode
