#!/usr/bin/env bash
# Set up and run the embedded default: SmolLM2 (int8 W8A8) on vLLM CPU with the demo
# adapters and the `auto` route table, and the gateway on 127.0.0.1:8000 with its state in
# .state/. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
# Models come from local packages and files only: never ask a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# `model: "auto"` starts with the demo route table (the registry's table once one is put).
export GATEWAY_ROUTING__TABLE=${GATEWAY_ROUTING__TABLE:-demo}
scripts/setup.sh
.venv/bin/lora-gateway prepare
exec .venv/bin/lora-gateway serve "$@"
