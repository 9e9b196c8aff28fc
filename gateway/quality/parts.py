"""The quality parts, built together from the settings: the response log, the scorers (the
configuration in use, verifiers and reward models, judges), feedback, and their start and
stop order."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.quality.config import JudgeSpec
from gateway.quality.feedback import FeedbackService
from gateway.quality.judge import Judge, judge_for
from gateway.quality.judging import EngineTransport, Judging
from gateway.quality.offload import ChildSettings, ScoringProcess
from gateway.quality.responselog import ResponseLog
from gateway.quality.rewards import RewardLoader
from gateway.quality.scorers import ScorerConfigs
from gateway.quality.scoring import Scoring
from gateway.registry.documents import scorer_configs
from gateway.registry.quality import QualityStore
from gateway.routing.embedder import OnnxEmbedder, load_embedder
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy


@dataclass
class QualityParts:
    """Everything that records and scores answers."""

    store: QualityStore
    responses: ResponseLog
    scoring: Scoring
    judging: Judging
    scorers: ScorerConfigs
    feedback: FeedbackService
    clients: tuple[httpx.AsyncClient, ...]

    async def start(self, seed: str | None) -> None:
        """Install the scorer configuration (or seed it), then start the workers."""
        await self.scorers.start(seed)
        await self.scoring.start()
        await self.judging.start()
        await self.responses.start()

    async def stop(self) -> None:
        """Write what the response log holds, then stop the workers."""
        await self.responses.stop()
        await self.scoring.stop()
        await self.judging.stop()
        for client in self.clients:
            await client.aclose()


def build_quality(
    settings: Settings,
    sessions: sessionmaker[Session],
    metrics: Metrics,
    pool: UpstreamPool,
    proxy: EngineProxy,
) -> QualityParts:
    """Build the quality parts and join them (the response log feeds the scorers)."""
    quality = settings.quality
    # The scoring and writer threads hold the GIL between the event loop's turns; the loop
    # asking for it waits up to one switch interval each time (5 ms by default: tens of
    # milliseconds over a request's few turns). A shorter interval bounds that wait.
    sys.setswitchinterval(quality.gil_switch_interval_s)
    store = QualityStore(sessions)
    responses = ResponseLog(store, quality, metrics)
    rewards = RewardLoader(settings.resolved_reward_dir, lambda: _reward_embedder(settings))
    routing = settings.routing
    process = None
    if quality.score_in_process:
        child = ChildSettings(
            settings.resolved_reward_dir,
            settings.cache_dir,
            routing.model_path,
            routing.tokenizer_path,
            routing.max_tokens,
            settings.resolved_database_url,
        )
        process = ScoringProcess(child)
    scoring = Scoring(
        store, metrics, max_queue=quality.max_score_queue, rewards=rewards, process=process
    )
    judging = Judging(
        store, metrics, max_queue=quality.max_judge_queue, concurrency=quality.judge_concurrency
    )
    # The default judge is the base model, reached through the engine pool (never logged);
    # a judge with an `endpoint` is called over HTTP.
    engine_client = httpx.AsyncClient(transport=EngineTransport(pool, proxy))
    judge_client = httpx.AsyncClient()

    def make_judge(spec: JudgeSpec) -> Judge:
        return judge_for(
            spec,
            engine_client if spec.endpoint is None else judge_client,
            gateway_url="http://engine/v1",
            base_model=settings.base_model_name,
            timeout_s=quality.judge_timeout_s,
        )

    scorers = ScorerConfigs(scorer_configs(sessions), scoring, metrics, judging, make_judge)
    responses.score_rate = lambda route: max(scoring.rate(route), judging.rate(route))
    responses.listen(scoring.submit)
    responses.listen(judging.submit)
    feedback = FeedbackService(store, responses, metrics)
    return QualityParts(
        store, responses, scoring, judging, scorers, feedback, (engine_client, judge_client)
    )


def _reward_embedder(settings: Settings) -> OnnxEmbedder:
    """The router's embedding model, loaded again for the reward heads (one thread)."""
    routing = settings.routing
    return load_embedder(
        settings.cache_dir,
        model=routing.model_path,
        tokenizer=routing.tokenizer_path,
        max_tokens=routing.max_tokens,
    )
