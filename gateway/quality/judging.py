"""The LLM judge at run time: sampled answers graded pointwise, shadow pairs pairwise.

Judges are slow (a completion per grading, two per pair), so they have their own bounded
queue and at most `concurrency` gradings in flight; a job past the queue's bound is dropped
and counted, never waited for. A judge with no `endpoint` is the gateway's own base model,
reached through the engine pool directly (`EngineTransport`): its requests are never
logged, scored, rate-limited or counted as anyone's traffic.

Scores: pointwise, the 1-10 grade under the answer's variant; pairwise, only when both
orders agree, the candidate's win (1), tie (0.5) or loss (0) under the variant `paired`
(its mean is the candidate's win rate against stable). Unreadable gradings, errors and
order disagreements store nothing and are counted in `gateway_quality_judge_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from gateway.background.tasks import cancel_and_wait
from gateway.metrics import Metrics
from gateway.quality.config import JudgeSpec, ScorerConfig
from gateway.quality.judge import Judge, PairVerdict
from gateway.quality.records import Served, answer_text, last_user_text, text_of
from gateway.registry.quality import NewScore, QualityStore
from gateway.registry.schema import ShadowPairRow
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy

log = logging.getLogger(__name__)
KIND = "judge"
WIN: dict[PairVerdict, float] = {"candidate": 1.0, "tie": 0.5, "stable": 0.0}
# Builds the judge of a spec (raises when its rubric is unknown).
JudgeFactory = Callable[[JudgeSpec], Judge]


class EngineTransport(httpx.AsyncBaseTransport):
    """httpx to the engine replicas the gateway serves from, for the default judge."""

    def __init__(self, pool: UpstreamPool, proxy: EngineProxy) -> None:
        self._pool = pool
        self._proxy = proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one (non-streamed) request to a healthy replica, for the base model."""
        body = await request.aread()
        lease, reply = await self._proxy.dispatch(
            None, request.url.path, body, "quality-judge", False
        )
        lease.release()
        return httpx.Response(
            reply.status, content=reply.body, headers={"content-type": reply.content_type}
        )


@dataclass(frozen=True, slots=True)
class _Point:
    served: Served
    name: str
    judge: Judge


@dataclass(frozen=True, slots=True)
class _Pair:
    pair_id: int
    rollout_id: int
    route: str
    version: int
    question: str
    stable: str
    candidate: str
    name: str
    judge: Judge


@dataclass(frozen=True)
class Judges:
    """Each route's judges, built once per configuration: (name, sample rate, judge)."""

    pointwise: Mapping[str, tuple[tuple[str, float, Judge], ...]]
    pairwise: Mapping[str, tuple[tuple[str, Judge], ...]]

    @classmethod
    def of(cls, config: ScorerConfig, factory: JudgeFactory) -> Judges:
        """The judges of `config` (a bad rubric raises)."""
        point: dict[str, tuple[tuple[str, float, Judge], ...]] = {}
        pair: dict[str, tuple[tuple[str, Judge], ...]] = {}
        for route, scorers in config.scorers.items():
            specs = [(s, s.spec) for s in scorers if isinstance(s.spec, JudgeSpec)]
            point[route] = tuple(
                (s.name, s.sample_rate, factory(spec))
                for s, spec in specs
                if spec.mode == "pointwise"
            )
            pair[route] = tuple(
                (s.name, factory(spec)) for s, spec in specs if spec.mode == "pairwise"
            )
        return cls(point, pair)

    def rate(self, route: str) -> float:
        """The share of the route's answers a pointwise judge samples."""
        return max((rate for _, rate, _ in self.pointwise.get(route, ())), default=0.0)


class Judging:
    """Runs the judges of the configuration in use, off the request path."""

    def __init__(
        self,
        store: QualityStore,
        metrics: Metrics,
        *,
        max_queue: int = 1000,
        concurrency: int = 2,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_queue = max_queue
        self._concurrency = concurrency
        self._judges = Judges({}, {})
        self._queue: deque[_Point | _Pair] = deque()
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    def install(self, judges: Judges) -> None:
        """Judge with these from now on (queued jobs keep theirs)."""
        self._judges = judges

    def rate(self, route: str) -> float:
        """The share of the route's answers a pointwise judge samples."""
        return self._judges.rate(route)

    @property
    def depth(self) -> int:
        """Jobs waiting for a judge."""
        return len(self._queue)

    def submit(self, batch: list[Served]) -> None:
        """Queue the sampled pointwise gradings of stored answers (never waits)."""
        for served in batch:
            if served.status != 200 or served.payload is None:
                continue
            for name, rate, judge in self._judges.pointwise.get(served.route, ()):
                if served.draw < rate:
                    self._put(_Point(served, name, judge), served.route, name)

    def submit_pairs(self, pairs: Sequence[ShadowPairRow], route: str) -> None:
        """Queue the pairwise gradings of a route's stored shadow pairs (never waits)."""
        for name, judge in self._judges.pairwise.get(route, ()):
            for pair in pairs:
                if pair.primary_status != 200 or pair.shadow_status != 200:
                    continue
                stable_stream = not pair.primary_body.lstrip().startswith("{")
                job = _Pair(
                    pair.id,
                    pair.rollout_id,
                    route,
                    pair.shadow_version,
                    last_user_text(pair.request) or "",
                    text_of(pair.primary_body, stream=stable_stream) or "",
                    text_of(pair.shadow_body, stream=False) or "",
                    name,
                    judge,
                )
                self._put(job, route, name)

    def _put(self, job: _Point | _Pair, route: str, name: str) -> None:
        if len(self._queue) >= self._max_queue:
            self._metrics.quality_dropped.labels(KIND).inc()
            self._metrics.quality_judge.labels(route, name, "dropped").inc()
            return
        self._queue.append(job)
        self._metrics.quality_queue_depth.labels(KIND).set(len(self._queue))
        self._ready.set()

    async def start(self) -> None:
        """Start the workers."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"quality-judge-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Stop the workers; what is queued is dropped (counted)."""
        for task in self._workers:
            await cancel_and_wait(task)
        self._workers = []
        if self._queue:
            self._metrics.quality_dropped.labels(KIND).inc(len(self._queue))
            self._queue.clear()

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            job = self._queue.popleft()
            self._metrics.quality_queue_depth.labels(KIND).set(len(self._queue))
            try:
                score = await (self._point(job) if isinstance(job, _Point) else self._pair(job))
                if score is not None:
                    await asyncio.to_thread(self._store.add_scores, [score])
            except Exception:
                log.exception("quality judge: a grading was not stored")
                with contextlib.suppress(Exception):
                    self._metrics.quality_dropped.labels(KIND).inc()

    async def _point(self, job: _Point) -> NewScore | None:
        served = job.served
        result = await job.judge.pointwise(
            last_user_text(served.payload) or "", answer_text(served) or ""
        )
        outcome = (
            "error" if result.error else "scored" if result.score is not None else "unparseable"
        )
        self._metrics.quality_judge.labels(served.route, job.name, outcome).inc()
        if result.score is None:
            return None
        return NewScore(
            subject="",
            tenant=served.tenant,
            request_id=served.request_id,
            scorer=job.name,
            route=served.route,
            version=served.version,
            variant=served.variant,
            rollout_id=served.rollout_id,
            value=float(result.score),
            passed=None,
            detail=result.raw[:200],
        )

    async def _pair(self, job: _Pair) -> NewScore | None:
        result = await job.judge.pairwise(job.question, job.stable, job.candidate)
        if result.candidate_as_a.error or result.candidate_as_b.error:
            outcome = "error"
        elif result.parsed < 2:
            outcome = "unparseable"
        else:
            outcome = "agreed" if result.agreed else "disagreed"
        self._metrics.quality_judge.labels(job.route, job.name, outcome).inc()
        if result.verdict is None:
            return None
        win = WIN[result.verdict]
        return NewScore(
            subject=f"p{job.pair_id}:judge",
            scorer=job.name,
            route=job.route,
            version=job.version,
            variant="paired",
            rollout_id=job.rollout_id,
            value=win,
            passed=None if win == 0.5 else win == 1.0,
            detail=f"both orders: {result.verdict}",
        )
