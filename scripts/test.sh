#!/usr/bin/env bash
# Set up and run every check: ruff, mypy, unit tests (fake engine) and integration tests
# (real vLLM on the CPU with SmolLM2 and the demo adapters); PostgreSQL and Prometheus are
# started or installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# Models come from local packages and files only: never ask a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
scripts/setup.sh
scripts/ensure_postgres.sh
scripts/ensure_prometheus.sh
scripts/ensure_confseq.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
