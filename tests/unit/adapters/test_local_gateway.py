"""A script holding a LocalGateway that is stopped with SIGTERM stops what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The child: a LocalGateway whose "gateway" is a sleeping process, ready at once.
CHILD = """
import subprocess, sys, time
from pathlib import Path
import adapters.local_gateway as lg

def spawn(self, args, log, **env):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)
    self.procs.append(proc)
    return proc

lg.LocalGateway.spawn = spawn
lg.wait_ok = lambda *args, **kwargs: None
with lg.LocalGateway(Path(sys.argv[1])) as gateway:
    print(gateway.procs[0].pid, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone but for its parent's wait.
    status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return status != "Z"


def test_sigterm_stops_the_gateway_it_started(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        started = int(child.stdout.readline())
        assert _alive(started)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(started)
    finally:
        child.kill()
        child.wait()
