"""The application factory: every part is built here from one Settings object."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from gateway.api import health, openai
from gateway.api.errors import install_error_handlers
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.serving import OpenAIService
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.routing.catalog import AdapterVersion, ModelCatalog, scan_adapter_root
from gateway.upstream.launcher import EngineProcess, EngineSpec, engine_plugin_env
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy
from gateway.upstream.supervisor import EngineSupervisor

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    adapters: list[AdapterVersion] | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the gateway. Tests pass their own adapters and metrics registry."""
    metrics = metrics or Metrics()
    if adapters is None:
        adapters = scan_adapter_root(settings.resolved_adapter_root)
    catalog = ModelCatalog(settings.base_model_name, adapters)
    # Control-plane calls (health probes, adapter loads); requests go through `proxy`.
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=settings.upstream_connect_timeout_s)
    )
    pool = UpstreamPool(settings.upstreams, client, metrics, adapters=catalog.adapter_versions)
    proxy = EngineProxy(
        pool,
        metrics,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
    )
    supervisor = _engine_supervisor(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if supervisor is not None:
            await supervisor.start()
        else:
            _warn_unmanaged(settings)
        await proxy.open()
        await pool.check_all()
        pool.start(settings.health_interval_s)
        try:
            yield
        finally:
            await pool.stop()
            await proxy.close()
            if supervisor is not None:
                await supervisor.stop()
            await client.aclose()

    app = FastAPI(
        title="LoRA gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.service = OpenAIService(catalog, proxy, metrics)
    app.state.supervisor = supervisor
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def _engine_supervisor(settings: Settings, metrics: Metrics) -> EngineSupervisor | None:
    # No `--lora-modules`: adapters reach every replica, managed or not, the same way (the
    # pool loads what the catalogue has when the replica comes up healthy).
    if not settings.managed_engine:
        return None
    engine = settings.engine
    spec = EngineSpec(
        model_dir=settings.resolved_model_dir,
        served_name=settings.base_model_name,
        log_file=settings.state_dir / "engine.log",
        host=engine.host,
        port=engine.port,
        max_loras=engine.max_loras,
        max_lora_rank=engine.max_lora_rank,
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        kvcache_gib=engine.kvcache_gib,
        omp_threads_bind=engine.omp_threads_bind,
        quantization=engine.quantization,
        dtype=engine.dtype,
        extra_args=tuple(engine.extra_args),
        extra_env=engine_plugin_env(engine.lora_ops, compile_lora=engine.lora_compile),
        start_timeout_s=engine.start_timeout_s,
    )
    return EngineSupervisor(
        EngineProcess(spec), metrics, settings.state_dir / "engine.pid", restart=engine.restart
    )


def _warn_unmanaged(settings: Settings) -> None:
    for url in settings.upstream_urls:
        log.info("sending traffic to an engine the gateway does not manage: %s", url)
