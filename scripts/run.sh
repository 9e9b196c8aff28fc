#!/usr/bin/env bash
# Set up and run the embedded default: SmolLM2 (int8 W8A8) on vLLM CPU with the demo
# adapters and the `auto` route table, and the gateway on 127.0.0.1:8000 with its state in
# .state/. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
# Models come from local packages and files only: never ask a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# `model: "auto"` starts with the demo route table, the quality scorers with the demo
# verifiers and rollout analysis with the demo SLOs (the registry's once one is put).
export GATEWAY_ROUTING__TABLE=${GATEWAY_ROUTING__TABLE:-demo}
export GATEWAY_QUALITY__SCORERS=${GATEWAY_QUALITY__SCORERS:-demo}
export GATEWAY_ANALYSIS__SLOS=${GATEWAY_ANALYSIS__SLOS:-demo}
scripts/setup.sh
# The gateway prepares what it serves and says where things are; the demo adapters are the
# adapter pipeline's to train (both skip what is already there).
prepared=$(.venv/bin/lora-gateway prepare --json)
place() {
  .venv/bin/python -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' \
    "$prepared" "$1"
}
base_dir=$(place bf16_dir)
adapter_root=$(place adapter_root)
.venv/bin/python -m adapters train-demo --base-dir "$base_dir" --adapter-root "$adapter_root"
exec .venv/bin/lora-gateway serve "$@"
