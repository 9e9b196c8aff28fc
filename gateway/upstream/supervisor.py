"""Keep the managed engine running: start it, restart it when it dies, stop it cleanly.

A pid file records the engine's process group, so an engine orphaned by a gateway
that was killed is cleaned up by the next gateway before it starts its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path

from gateway.background.tasks import cancel_and_wait
from gateway.metrics import Metrics
from gateway.upstream.launcher import EngineProcess, EngineStartError

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0


class EngineSupervisor:
    """Runs one EngineProcess and restarts it with back-off when it exits."""

    def __init__(
        self, engine: EngineProcess, metrics: Metrics, pid_file: Path, restart: bool = True
    ) -> None:
        self.engine = engine
        self._metrics = metrics
        self._pid_file = pid_file
        self._restart = restart
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Spawn the engine and watch it in the background."""
        kill_stale_engine(self._pid_file)
        self._task = asyncio.create_task(self._run(), name="engine-supervisor")

    async def _run(self) -> None:
        backoff = 1.0
        first = True
        while True:
            if not first:
                self._metrics.engine_restarts.inc()
                log.warning("engine is down; starting it again in %.0fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            first = False
            try:
                await asyncio.to_thread(self._spawn_and_wait)
            except EngineStartError as exc:
                log.error("engine failed to start: %s", exc)
                if not self._restart:
                    return
                continue
            self.ready.set()
            log.info("engine ready at %s (pid %s)", self.engine.url, self.engine.pid)
            backoff = 1.0
            code = await asyncio.to_thread(self.engine.wait_exit)
            log.warning("engine exited with code %s", code)
            self.ready.clear()
            # The main process died: sweep whatever it left in its group.
            await asyncio.to_thread(self.engine.stop, 1.0)
            if not self._restart:
                log.error("engine exited and restart is disabled")
                return

    def _spawn_and_wait(self) -> None:
        self.engine.spawn()
        if self.engine.pid is not None:
            write_pid_file(self._pid_file, self.engine.pid, self.engine.spec.command())
        self.engine.wait_healthy()

    async def stop(self) -> None:
        """Stop watching and stop the engine's whole process group."""
        await cancel_and_wait(self._task)
        self._task = None
        await asyncio.to_thread(self.engine.stop)
        self._pid_file.unlink(missing_ok=True)


def write_pid_file(pid_file: Path, pid: int, argv: list[str]) -> None:
    """Record the engine's process group and command line."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(json.dumps({"pid": pid, "argv": argv}))


def read_pid_file(pid_file: Path) -> tuple[int, list[str]] | None:
    """The recorded engine pid and command line, if the file is there and sane."""
    try:
        record = json.loads(pid_file.read_text())
        return int(record["pid"]), [str(a) for a in record["argv"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kill_stale_engine(pid_file: Path) -> None:
    """Kill the process group of an engine left behind by an earlier gateway."""
    record = read_pid_file(pid_file)
    pid_file.unlink(missing_ok=True)
    if record is None:
        return
    pgid, argv = record
    try:
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return
    # Pids are reused: only kill a process that still runs the recorded engine command.
    if [part.decode(errors="replace") for part in cmdline] != argv:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        log.warning("killed a stale engine process group %s", pgid)
