#!/usr/bin/env bash
# Train, evaluate and register every example of adapters/examples end to end on a gateway of
# its own (the embedded engine), and check that the gates refuse the deliberately bad adapter;
# prints the held-out table of docs/pipeline.md. Everything goes under .state/examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
scripts/setup.sh
.venv/bin/lora-gateway prepare >/dev/null
exec .venv/bin/python -m adapters.examples_run "$@"
