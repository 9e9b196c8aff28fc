#!/usr/bin/env bash
# The pipeline's whole loop on this machine (docs/pipeline.md): run a spec -> stable; run a
# second version -> shadow -> canary -> promoted by the analysis; a broken version -> refused
# by its gates, pushed anyway -> rolled back by the gateway -> hook received -> lineage
# updated -> counterexamples exported. Everything goes under .state/demo-loop/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
scripts/setup.sh
.venv/bin/lora-gateway prepare >/dev/null
exec .venv/bin/python -m adapters.demo_loop "$@"
