"""Real processes for crash and multi-replica tests: the fake engine and gateway servers.

`Processes` starts one fake vLLM engine (`python -m gateway.testing.fake_vllm serve`) and
any number of `lora-gateway serve` processes in front of it, all on one registry database,
each in a session of its own so that `kill -9` (SIGKILL to the process group) takes the
gateway down at once, mid-request, the way a crash or an OOM kill would. `postgres_database`
creates a throwaway PostgreSQL database for one test and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from gateway.testing.server import free_port

REPO = Path(__file__).resolve().parents[2]
# The server the test databases are created on; its database part names the one to connect to.
POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ENGINE_MODEL = "smollm2"


@contextlib.contextmanager
def postgres_database(prefix: str = "test", server_url: str = POSTGRES_URL) -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL and drop it (forcefully) on exit.

    `server_url` is any database URL on the server (`postgresql://user@host:port/db`); the
    new database is named `<prefix>_<12 random hex digits>` and uses the same credentials.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def wait_until_ok(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll `url` until it answers 200; raise RuntimeError at once if `proc` exits,
    TimeoutError after `timeout_s` (`what` names the process in both messages)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 200 or 201 answer (anything else fails, showing the answer)."""
    assert response.status_code in (200, 201), (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    return body


@dataclass
class GatewayHandle:
    """One gateway process: its URL, environment and log; `kill()` is `kill -9`."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    state_dir: Path

    @property
    def alive(self) -> bool:
        """The process has not exited."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """What the process wrote to stdout and stderr so far (for failure messages)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until `/readyz` answers 200; fail at once if the process exits."""
        try:
            wait_until_ok(f"{self.url}/readyz", self.proc, timeout_s, self.name)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"gateway {exc}:\n{self.log_text()}") from None

    def kill(self) -> None:
        """SIGKILL the process group (no shutdown hooks run) and reap the process."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@dataclass
class Processes:
    """The fake engine and the gateway processes of one test; `stop()` kills all of them.

    Every gateway shares the engine, the adapter root (`tmp/adapters`), the base model
    directory (`tmp/model`) and `database_url`; each has its own port, log (`tmp/<name>.log`)
    and state directory (`tmp/<name>-state`), which a restart under the same name reuses.
    `env` applies to every gateway; `start_gateway(env=...)` overrides it for one.
    """

    tmp: Path
    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    engine_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateways: dict[str, GatewayHandle] = field(default_factory=dict)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def engine_url(self) -> str:
        """The fake engine's base URL."""
        return f"http://127.0.0.1:{self.engine_port}"

    def _spawn(self, args: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start_engine(self, *, timeout_s: float = 30.0, failing: Mapping[str, str] = {}) -> None:
        """Start the fake engine serving the base model as `smollm2`; wait for `/health`.

        `failing`: served model names (`pirate--v2`) that answer generations with a status
        of their own, after their first few (`"500@1"`: the warm-up passes, then 500s)."""
        log = self.tmp / "engine.log"
        args = ["-m", "gateway.testing.fake_vllm", "serve", "x", "--port", str(self.engine_port)]
        for name, status in failing.items():
            args += ["--model-status", f"{name}={status}"]  # STATUS[@AFTER]
        proc = self._spawn([*args, "--served-model-name", ENGINE_MODEL], log, {})
        try:
            wait_until_ok(f"{self.engine_url}/health", proc, timeout_s, "the fake engine", 0.05)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{exc}:\n{log.read_text()}") from None

    def gateway_env(
        self, name: str, port: int, env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment of gateway `name` on `port`: the shared settings, then overrides."""
        return {
            "GATEWAY_PORT": str(port),
            "GATEWAY_STATE_DIR": str(self.tmp / f"{name}-state"),
            "GATEWAY_ADAPTER_ROOT": str(self.tmp / "adapters"),
            "GATEWAY_UPSTREAM_URLS": self.engine_url,
            "GATEWAY_BASE_MODEL_NAME": ENGINE_MODEL,
            "GATEWAY_ENGINE__MODEL_DIR": str(self.tmp / "model"),
            "GATEWAY_DATABASE_URL": self.database_url,
            "GATEWAY_SEED_ADAPTERS": "false",
            "GATEWAY_HEALTH_INTERVAL_S": "0.2",
            **self.env,
            **(env or {}),
        }

    def start_gateway(
        self,
        name: str = "gateway",
        *,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout_s: float = 60.0,
    ) -> GatewayHandle:
        """Start gateway `name` on a new free port (again, after a kill); wait for `/readyz`.

        Starting a name whose process still runs is refused: kill it first.
        """
        previous = self.gateways.get(name)
        if previous is not None and previous.alive:
            raise RuntimeError(f"gateway {name} is running; kill it first")
        port = free_port()
        environment = self.gateway_env(name, port, env)
        log = self.tmp / f"{name}.log"
        proc = self._spawn(["-m", "gateway.cli", "serve"], log, environment)
        handle = GatewayHandle(
            name=name,
            url=f"http://127.0.0.1:{port}",
            proc=proc,
            env=environment,
            log=log,
            state_dir=Path(environment["GATEWAY_STATE_DIR"]),
        )
        self.gateways[name] = handle
        if wait:
            handle.wait_ready(timeout_s)
        return handle

    def stop(self) -> None:
        """SIGKILL every process started here that still runs (gateways and engine)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
