#!/bin/sh
# Start vLLM's OpenAI server on the embedded SmolLM2 base, as the gateway's launcher does
# for a managed engine: CHECKPOINT=auto serves the int8 W8A8 checkpoint on a CPU with int8
# dot products (VNNI, AMX) and the bf16 original in float32 elsewhere (gateway/engine/cpu.py);
# `w8a8`, `bf16` or `float32` force one. Arguments are further `vllm serve` flags.
set -eu

checkpoint=${CHECKPOINT:-auto}
if [ "$checkpoint" = auto ]; then
    checkpoint=$(python -c 'from gateway.engine import cpu; print(cpu.served_checkpoint("auto"))')
fi
case "$checkpoint" in
    float32) model=smollm2-135m-instruct-bf16 dtype=float32 ;;
    bf16 | w8a8 | w4a16) model=smollm2-135m-instruct-$checkpoint dtype= ;;
    *)
        echo "CHECKPOINT must be auto, w8a8, w4a16, bf16 or float32, not $checkpoint" >&2
        exit 2
        ;;
esac
model_dir="${MODELS_DIR:-/opt/lora-gateway/models}/$model"
if [ ! -f "$model_dir/config.json" ]; then
    echo "no $checkpoint checkpoint in this image ($model_dir); build it with --build-arg CHECKPOINT=$checkpoint" >&2
    exit 2
fi
echo "serving $model_dir (checkpoint $checkpoint)" >&2
if [ -n "$dtype" ]; then
    set -- --dtype "$dtype" "$@"
fi
exec python -m gateway.engine.vllm_entry serve "$model_dir" \
    --host 0.0.0.0 --port "${PORT:-8000}" \
    --served-model-name "${SERVED_MODEL_NAME:-smollm2-135m-instruct}" \
    --disable-uvicorn-access-log "$@"
