"""What both benchmarks share: child processes in their own groups, pinning, health waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.config import DEFAULT_CACHE_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
# What `scripts/run.sh` prepares: the quantized base model (`lora-gateway prepare`) and the
# demo adapters (`python -m adapters train-demo`).
DEFAULT_MODEL_DIR = DEFAULT_CACHE_DIR / "models" / "smollm2-135m-instruct-w8a8"
DEFAULT_ADAPTER_ROOT = DEFAULT_CACHE_DIR / "adapters"


MISSING_ASSETS = "run `scripts/run.sh` once (it prepares the model and trains the demo adapters)"


class BenchError(RuntimeError):
    """A benchmark could not run (a process failed to start, a port is taken, ...)."""


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """`{"p50": ..., "p90": ..., "p99": ...}` of `values` (NaN when empty)."""
    if not values:
        return {f"p{q:g}": float("nan") for q in qs}
    points = np.percentile(np.asarray(values, dtype=np.float64), list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, points, strict=True)}


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: this one, the repo importable, plus `extra`."""
    env = dict(os.environ)
    # `loadtest` is not an installed package: children import it from the checkout.
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def _pin(cores: set[int] | None) -> Callable[[], None] | None:
    if not cores:
        return None

    def pin() -> None:
        # Runs in the child before exec, so every thread it ever starts inherits the mask.
        os.sched_setaffinity(0, cores)

    return pin


def spawn(
    cmd: Sequence[str],
    log_file: Path,
    env: Mapping[str, str],
    cores: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own process group, optionally pinned to `cores`, output to a file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=_pin(cores),
        )


def stop(
    proc: subprocess.Popen[bytes], grace_s: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Signal the child's whole group (SIGTERM), SIGKILL it after `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    # Grandchildren may outlive the leader: always sweep the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def log_tail(log_file: Path, chars: int = 2000) -> str:
    """The end of a child's log (logs live in temporary directories that go away)."""
    try:
        return log_file.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log_file: Path) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{url}: process exited ({proc.returncode}):\n{log_tail(log_file)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.2)
    raise BenchError(f"{url} not ready after {timeout_s:.0f}s:\n{log_tail(log_file)}")


def ensure_port_free(port: int) -> None:
    """Fail clearly when a loopback port is already taken (another run, another user)."""
    with socket.socket() as sock:
        # Like the servers do, so connections still in TIME_WAIT from a last run do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BenchError(f"port {port} is in use: {exc}") from exc


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


# The CPU features a number depends on (int8 dot products, bf16, matrix tiles).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def machine() -> dict[str, Any]:
    """What a number was measured on: CPU model, family/model, the flags that matter, cores,
    load average and date (recorded beside every benchmark result)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": info.get("model name", "unknown"),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "load_average": round(load_average(), 2),
        "date": time.strftime("%Y-%m-%d"),
    }


def machine_line() -> str:
    """`machine()` in one line."""
    m = machine()
    return (
        f"{m['cpu_model']} (family/model {m['cpu_family_model']}; "
        f"{' '.join(m['cpu_flags']) or 'no AVX2'}), {m['cores']} cores, "
        f"load {m['load_average']}, {m['date']}"
    )


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write a result file (NaN becomes null, so other tools can read it)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(dict(data)), indent=2) + "\n")


def finish(
    console: Any, json_out: Path | None, load_before: float, load_after: float, **fields: Any
) -> None:
    """Print the load average around a run and, when asked, write its result file: the
    machine, the load average before and after, and `fields`."""
    console.print(f"load average {load_before:.2f} before, {load_after:.2f} after")
    if json_out is not None:
        write_json(
            json_out,
            {"machine": machine(), "load_before": load_before, "load_after": load_after, **fields},
        )


def run_guarded(run: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run a benchmark with SIGTERM taking the Ctrl-C path (so every child is stopped).

    Returns its result and the 1-minute load average before and after; a BenchError is
    printed by the caller's CLI as a clean failure.
    """
    load_before = load_average()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = run()
    return result, load_before, load_average()


@contextlib.contextmanager
def gateway_process(
    env: Mapping[str, str], log_file: Path, url: str, ready_timeout_s: float = 900
) -> Iterator[subprocess.Popen[bytes]]:
    """`lora-gateway serve` (with its managed engine) ready at `url`; stopped on exit."""
    gateway = spawn([sys.executable, "-m", "gateway.cli", "serve"], log_file, env)
    try:
        wait_ok(f"{url}/readyz", gateway, ready_timeout_s, log_file)
        yield gateway
    finally:
        with contextlib.suppress(Exception):
            stop(gateway, grace_s=30)
