"""The application factory: every part is built here from one Settings object."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from gateway.analysis.leader import Leadership
from gateway.analysis.runner import AnalysisRunner
from gateway.analysis.slos import SloConfigs
from gateway.api import (
    admin_adapters,
    admin_analysis,
    admin_evidence,
    admin_hooks,
    admin_rollouts,
    admin_route_table,
    admin_scorers,
    admin_slos,
    admin_upstreams,
    admin_usage,
    feedback,
    health,
    openai,
)
from gateway.api.auth import ApiKeyMiddleware, KeyRing, describe_open_mode
from gateway.api.errors import install_error_handlers
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from gateway.api.serving import OpenAIService
from gateway.catalog import CatalogView, ModelCatalog
from gateway.config import Settings
from gateway.hooks.parts import build_hooks
from gateway.lifecycle import AdapterLifecycle
from gateway.metrics import Metrics
from gateway.observability.tracing import Tracing, TracingMiddleware
from gateway.quality.evidence import EvidenceService
from gateway.quality.parts import build_quality
from gateway.registry.analysis import AnalysisStore
from gateway.registry.changes import ChangeFeed
from gateway.registry.database import make_engine, session_factory, upgrade
from gateway.registry.documents import route_tables, slo_configs
from gateway.registry.evidence import EvidenceStore
from gateway.registry.rollouts import RolloutStore
from gateway.registry.store import Registry
from gateway.registry.validation import BaseModelInfo, ServedBase
from gateway.rollout.manager import RolloutManager
from gateway.routing.router import AutoRouter
from gateway.upstream.discovery import DnsDiscovery
from gateway.upstream.launcher import EngineProcess, EngineSpec, engine_plugin_env
from gateway.upstream.outliers import OutlierPolicy
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy
from gateway.upstream.supervisor import EngineSupervisor

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    base_info: BaseModelInfo | None = None,
) -> FastAPI:
    """Build the gateway. Tests pass their own metrics registry and base-model shapes."""
    metrics = metrics or Metrics()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    database = make_engine(settings.resolved_database_url)
    catalogs = CatalogView(ModelCatalog(settings.base_model_name))
    registry = Registry(session_factory(database))
    changes = ChangeFeed(database, poll_s=settings.resolved_registry_poll_s)
    # Control-plane calls (health probes, adapter loads); requests go through `proxy`.
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=settings.upstream_connect_timeout_s)
    )
    pool = UpstreamPool(
        settings.upstreams,
        client,
        metrics,
        capacity=settings.max_resident_adapters,
        outliers=OutlierPolicy(**settings.outliers.model_dump()),
    )
    discovery = (
        None
        if settings.upstream_dns is None
        else DnsDiscovery(settings.upstream_dns, pool, settings.upstream_dns_interval_s)
    )
    lifecycle = AdapterLifecycle(
        registry,
        pool,
        changes,
        adapter_root=settings.resolved_adapter_root,
        base=ServedBase(
            settings.base_model_name, settings.base_model_id, base_info or _base_info(settings)
        ),
        max_rank=settings.engine.max_lora_rank,
        metrics=metrics,
        catalogs=catalogs,
    )
    router = AutoRouter(
        route_tables(session_factory(database)),
        catalogs,
        settings.routing,
        metrics,
        cache_dir=settings.cache_dir,
    )
    keyring = KeyRing.from_settings(settings)
    limiter: RateLimiter = (
        LocalRateLimiter(keyring.tenants)
        if settings.redis_url is None
        else RedisRateLimiter(settings.redis_url, keyring.tenants, metrics, settings.redis_prefix)
    )
    tracing = None if settings.otlp_endpoint is None else Tracing.to_otlp(settings.otlp_endpoint)
    proxy = EngineProxy(
        pool,
        metrics,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        tracing=tracing,
    )
    supervisor = _engine_supervisor(settings, metrics)
    # Webhooks on rollout events: the outbox every rollout change and kept verdict writes its
    # messages into, in its own transaction, and the worker that delivers them (started by
    # `lifespan`; safe on every replica: claims are leases).
    hooks = build_hooks(settings, session_factory(database), metrics)
    rollouts = RolloutManager(
        RolloutStore(session_factory(database), announce=hooks.outbox.enqueue),
        lifecycle,
        catalogs,
        pool,
        proxy,
        metrics,
        settings.rollout,
    )
    quality = build_quality(settings, session_factory(database), metrics, pool, proxy)
    rollouts.listen_pairs(quality.scoring.submit_pairs)
    rollouts.listen_pairs(quality.judging.submit_pairs)
    slos = SloConfigs(slo_configs(session_factory(database)), metrics)
    analysis = AnalysisRunner(
        AnalysisStore(session_factory(database), announce=hooks.outbox.enqueue),
        quality.store,
        rollouts,
        slos,
        Leadership(database),
        metrics,
        settings.analysis,
        identity=f"{socket.gethostname()}:{os.getpid()}",
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for line in describe_open_mode(keyring.admin_configured, keyring.tenants_configured):
            log.warning("%s", line)
        await asyncio.to_thread(upgrade, database)
        await lifecycle.start(seed=settings.seed_adapters)
        await router.start(settings.routing.table)
        if supervisor is not None:
            await supervisor.start()
        else:
            _warn_unmanaged(settings)
        await proxy.open()
        if discovery is not None:
            await discovery.start()
        await pool.check_all()
        pool.start(settings.health_interval_s)
        # After the engines are checked: a rollout found running warms its candidate first.
        await rollouts.start()
        await quality.start(settings.quality.scorers)
        if settings.hooks.enabled:
            await hooks.start()
        await slos.start(settings.analysis.slos)
        # Every change to the registry, made here or by another replica, refreshes the parts
        # in this order: the catalogue before the rollouts that name its versions, then
        # versions that may no longer serve are unloaded.
        await changes.start(
            lifecycle.refresh,
            router.refresh,
            rollouts.refresh,
            quality.scorers.refresh,
            slos.refresh,
            pool.sweep,
        )
        # The leader (one replica of a registry) looks at the active rollouts and acts.
        await analysis.start()
        # Everything loaded so far lives as long as the process: out of the collector's
        # sight, a full collection (run by whichever thread allocates, the scoring worker's
        # included, holding the GIL throughout) walks only what came after.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await hooks.stop()
            await analysis.stop()
            await changes.stop()
            await rollouts.stop()
            await quality.stop()
            await router.close()
            if discovery is not None:
                await discovery.stop()
            await pool.stop()
            await proxy.close()
            if supervisor is not None:
                await supervisor.stop()
            await client.aclose()
            await limiter.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)
            database.dispose()

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
    app.state.lifecycle = lifecycle
    app.state.router = router
    app.state.rollouts = rollouts
    app.state.service = OpenAIService(
        catalogs,
        pool,
        proxy,
        metrics,
        router,
        rollouts,
        quality.responses,
        log_prompts=settings.log_prompts,
    )
    app.state.quality_store = quality.store
    app.state.responses = quality.responses
    app.state.scorers = quality.scorers
    app.state.scoring = quality.scoring
    app.state.judging = quality.judging
    app.state.feedback = quality.feedback
    app.state.evidence = EvidenceService(
        EvidenceStore(session_factory(database)), quality.responses
    )
    app.state.slos = slos
    app.state.analysis = analysis
    app.state.supervisor = supervisor
    app.state.changes = changes
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(admin_adapters.router)
    app.include_router(admin_route_table.router)
    app.include_router(admin_analysis.router)
    app.include_router(admin_evidence.router)
    app.include_router(admin_rollouts.router)
    app.include_router(admin_usage.router)
    app.include_router(admin_upstreams.router)
    app.include_router(admin_scorers.router)
    app.include_router(admin_slos.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    # Added first, so it runs inside the request-id middleware (refusals carry the id).
    app.add_middleware(ApiKeyMiddleware, keyring=keyring, metrics=metrics, limiter=limiter)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    if tracing is not None:
        # Outermost: the span covers the whole request, refusals included.
        app.add_middleware(TracingMiddleware, tracing=tracing)
    app.state.outbox = hooks.outbox
    app.state.hook_delivery = hooks.delivery
    app.include_router(admin_hooks.router)
    return app


def _base_info(settings: Settings) -> BaseModelInfo | None:
    """The served model's shapes, read from its `config.json` (None if it is not here)."""
    model_dir = settings.resolved_model_dir
    if not (model_dir / "config.json").is_file():
        log.warning("no config.json in %s: adapter registration is refused", model_dir)
        return None
    return BaseModelInfo.from_model_dir(settings.base_model_id, model_dir)


def _engine_supervisor(settings: Settings, metrics: Metrics) -> EngineSupervisor | None:
    # No `--lora-modules`: adapters reach every replica, managed or not, the same way (the
    # pool loads them on demand and restores each replica's set when it comes up healthy).
    if not settings.managed_engine:
        return None
    engine = settings.engine
    if engine.model_dir is None:
        log.info(
            "engine: the embedded %s checkpoint (checkpoint=%s)",
            settings.resolved_checkpoint,
            engine.checkpoint,
        )
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
        dtype=settings.resolved_engine_dtype,
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
    if settings.upstream_dns is not None:
        log.info("engine replicas: every address of %s", settings.upstream_dns)
