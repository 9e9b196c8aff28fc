#!/usr/bin/env bash
# The registry tests run against PostgreSQL on 127.0.0.1:5432 (trust auth) as well as SQLite.
# Start the machine's local cluster when it is not answering; fail loudly if it cannot be.
set -uo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432; }
ready && exit 0
command -v pg_isready >/dev/null || { echo "PostgreSQL client tools are not installed" >&2; exit 1; }
echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
if command -v pg_ctlcluster >/dev/null; then
  for dir in /etc/postgresql/*/main; do
    [[ -d "$dir" ]] && pg_ctlcluster "$(basename "$(dirname "$dir")")" main start
  done
else
  service postgresql start
fi
for _ in $(seq 30); do ready && exit 0; sleep 1; done
echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
exit 1
