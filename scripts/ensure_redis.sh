#!/usr/bin/env bash
# The shared rate-limit tests run against Redis on 127.0.0.1:6379. Start it when it is not
# answering (installing Debian's package if the server is missing); fail loudly otherwise.
set -uo pipefail
ready() { "${PYTHON:-.venv/bin/python}" - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
ready && exit 0
echo "Redis is not answering on 127.0.0.1:6379; starting it"
if ! command -v redis-server >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends redis-server >/dev/null \
    || { $SUDO apt-get update -q >/dev/null \
         && $SUDO apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
fi
command -v redis-server >/dev/null || { echo "Redis could not be installed" >&2; exit 1; }
# Nothing is kept on disk: the tests' buckets are short-lived.
redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
for _ in $(seq 30); do ready && exit 0; sleep 1; done
echo "Redis did not come up on 127.0.0.1:6379" >&2
exit 1
