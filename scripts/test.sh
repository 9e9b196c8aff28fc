#!/usr/bin/env bash
# Set up and run every check: ruff, mypy, unit tests (fake engine) and integration tests
# (real vLLM on the CPU with SmolLM2 and the demo adapters); PostgreSQL and Prometheus are
# started or installed when missing. With arguments, runs only `pytest ARGS`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Models come from local packages and files only: never ask a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
scripts/setup.sh
scripts/ensure_postgres.sh
scripts/ensure_redis.sh
scripts/ensure_prometheus.sh
scripts/ensure_confseq.sh
scripts/ensure_deploy_tools.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [[ $# -gt 0 ]]; then
  exec .venv/bin/pytest "$@"
fi
# The unit tests and the deploy/ validations on every core, one file per worker (a file's
# shared fixtures are built once); then the integration tests alone, in order: they share one real engine, which
# wants both cores.
.venv/bin/pytest tests/unit tests/deploy -n "${TEST_WORKERS:-$(nproc)}" --dist loadfile
# The slowest ones are listed: where the suite's time goes, in every run's log.
.venv/bin/pytest tests/integration --durations=15
