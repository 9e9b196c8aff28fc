"""Verifier scoring: scores of sampled answers and of shadow pairs, made off the request path.

The response log hands each batch it has stored to `submit`, the rollout manager each batch
of shadow pairs it has stored to `submit_pairs`. Both only pick the verifiers and queue one
job per answer (or pair); past `max_queue` queued jobs a job is dropped and counted, never
waited for: a slow database costs scores, never requests, and memory stays bounded.

One worker takes up to `batch` jobs at a time and makes one thread hop per batch: the
verifiers (pure CPU, microseconds an answer) and `QualityStore.add_scores` (a blocking
transaction that also moves the aggregates) run together on a worker thread of low
priority (`LowPriorityThread`: requests get the core first). A batch
the store refuses is dropped and counted too; its scores are a sample, not a ledger.

A served answer gets one score per sampled verifier, under the variant that served it. A
shadow pair gets three per verifier of its route: the candidate's answer (variant `shadow`),
the stable answer (variant None: stored, not aggregated, as the stable answers are already
scored from the response log) and their difference (variant `paired`, candidate minus
stable, no verdict), which compares both versions on the very same requests.

Judge and reward scorers are not run here (their own workers will run them): `rate` and the
jobs count a route's verifiers only.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from gateway.background.lowpriority import LowPriorityThread
from gateway.background.tasks import cancel_and_wait
from gateway.errors import InvalidScorerConfig
from gateway.metrics import Metrics
from gateway.quality.config import RewardSpec, ScorerConfig, ScorerConfigSpec
from gateway.quality.offload import ScoringProcess
from gateway.quality.records import Served, answer_text, last_user_text, text_of
from gateway.quality.verdict import Verdict
from gateway.registry.quality import NewScore, QualityStore
from gateway.registry.schema import ShadowPairRow

log = logging.getLogger(__name__)
KIND: Final = "verifier"


class Checker(Protocol):
    """A scorer that runs here, in the worker thread: a verifier, or a reward model."""

    @property
    def name(self) -> str:
        """The name its scores are stored under."""
        ...

    def __call__(self, answer: str, prompt: str = "") -> Verdict: ...


# Builds a reward scorer from its spec (raises when its model cannot be used).
RewardLoader = Callable[[str, RewardSpec], Checker]


@dataclass(frozen=True, slots=True)
class _AnswerJob:
    served: Served
    verifiers: tuple[Checker, ...]
    # The configuration the verifiers come from (the child process builds its own from it).
    source: str


@dataclass(frozen=True, slots=True)
class _PairJob:
    # Copied out of the row: the worker thread never touches an ORM object.
    pair_id: int
    rollout_id: int
    route: str
    request: dict[str, Any]
    stable_version: int
    stable_body: str
    shadow_version: int
    shadow_body: str
    verifiers: tuple[Checker, ...]
    source: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """A configuration with each route's verifiers (and their rates) picked out once."""

    config: ScorerConfig
    # route -> ((verifier, sample rate), ...)
    verifiers: Mapping[str, tuple[tuple[Checker, float], ...]]
    rates: Mapping[str, float]

    @classmethod
    def of(cls, config: ScorerConfig, rewards: RewardLoader | None = None) -> Prepared:
        """Pick out each route's verifiers, and build its reward scorers with `rewards`
        (InvalidScorerConfig naming every reward model that cannot be used)."""
        checkers: dict[str, tuple[tuple[Checker, float], ...]] = {}
        problems: list[str] = []
        for route, scorers in config.scorers.items():
            picked: list[tuple[Checker, float]] = []
            for i, s in enumerate(scorers):
                if s.verifier is not None:
                    picked.append((s.verifier, s.sample_rate))
                elif isinstance(s.spec, RewardSpec) and rewards is not None:
                    try:
                        picked.append((rewards(s.name, s.spec), s.sample_rate))
                    except Exception as exc:
                        problems.append(f"routes.{route}.scorers[{i}]: {exc}")
            checkers[route] = tuple(picked)
        if problems:
            raise InvalidScorerConfig(problems)
        rates = {
            route: max((rate for _, rate in vs), default=0.0) for route, vs in checkers.items()
        }
        return cls(config, checkers, rates)


class Scoring:
    """Runs the verifier scorers on sampled answers and shadow pairs, in batches."""

    def __init__(
        self,
        store: QualityStore,
        metrics: Metrics,
        *,
        max_queue: int = 10_000,
        batch: int = 256,
        rewards: RewardLoader | None = None,
        process: ScoringProcess | None = None,
    ) -> None:
        self._store = store
        self._rewards = rewards
        # Evaluate in this child process instead of the scoring thread.
        self._process = process
        self._thread = LowPriorityThread("quality-scoring")
        self._metrics = metrics
        self._max_queue = max_queue
        self._batch = batch
        self._in_use = Prepared.of(ScorerConfig.from_spec(ScorerConfigSpec(), ""))
        self._queue: deque[_AnswerJob | _PairJob] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._current: asyncio.Task[None] | None = None
        # Scorers whose failure was logged: a broken scorer fails on every answer.
        self._logged: set[str] = set()

    def use(self, config: ScorerConfig) -> None:
        """Score with `config` from now on (jobs already queued keep their verifiers)."""
        self.install(self.prepare(config))

    def prepare(self, config: ScorerConfig) -> Prepared:
        """`config` ready to score with (its reward models loaded: run it in a thread)."""
        return Prepared.of(config, self._rewards)

    def install(self, prepared: Prepared) -> None:
        """Score with a prepared configuration from now on."""
        self._in_use = prepared

    @property
    def config(self) -> ScorerConfig:
        """The configuration in use."""
        return self._in_use.config

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker."""
        return len(self._queue)

    def rate(self, route: str) -> float:
        """The share of `route`'s answers some verifier samples (0.0 when it has none)."""
        return self._in_use.rates.get(route, 0.0)

    def submit(self, batch: list[Served]) -> None:
        """Queue the sampled verifiers of each stored answer (on the event loop; never waits)."""
        in_use = self._in_use
        jobs = []
        for served in batch:
            if served.status != 200 or served.payload is None:
                continue
            chosen = tuple(
                v for v, rate in in_use.verifiers.get(served.route, ()) if served.draw < rate
            )
            if chosen:
                jobs.append(_AnswerJob(served, chosen, in_use.config.source))
        self._put(jobs)

    def submit_pairs(self, pairs: Sequence[ShadowPairRow], route: str) -> None:
        """Queue stored shadow pairs of `route` for all its verifiers (the rollout sampled them)."""
        verifiers = tuple(v for v, _ in self._in_use.verifiers.get(route, ()))
        if not verifiers:
            return
        self._put(
            [
                _PairJob(
                    pair.id,
                    pair.rollout_id,
                    route,
                    pair.request,
                    pair.primary_version,
                    pair.primary_body,
                    pair.shadow_version,
                    pair.shadow_body,
                    verifiers,
                    self._in_use.config.source,
                )
                for pair in pairs
                if pair.primary_status == 200 and pair.shadow_status == 200
            ]
        )

    def _put(self, jobs: Sequence[_AnswerJob | _PairJob]) -> None:
        room = max(0, self._max_queue - len(self._queue))
        self._queue.extend(jobs[:room])
        if len(jobs) > room:
            self._metrics.quality_dropped.labels(KIND).inc(len(jobs) - room)
        if self._queue:
            self._ready.set()
        self._metrics.quality_queue_depth.labels(KIND).set(len(self._queue))

    def _take(self, n: int) -> list[_AnswerJob | _PairJob]:
        jobs = [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
        self._metrics.quality_queue_depth.labels(KIND).set(len(self._queue))
        return jobs

    async def start(self) -> None:
        """Start the worker."""
        self._task = asyncio.create_task(self._loop(), name="quality-scoring")

    async def stop(self) -> None:
        """Stop the worker after the batch in hand and at most one more; drop (and count)
        what is left, so that a long queue cannot hold up a shutdown."""
        await cancel_and_wait(self._task)
        self._task = None
        current, self._current = self._current, None
        if current is not None:
            await current
        jobs = self._take(self._batch)
        if jobs:
            await self._run(jobs)
        if self._queue:
            self._metrics.quality_dropped.labels(KIND).inc(len(self._queue))
            self._queue.clear()
            self._metrics.quality_queue_depth.labels(KIND).set(0)
        if self._process is not None:
            self._process.close()

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            # Shielded: a thread cannot be stopped halfway, so stop() waits for the batch.
            self._current = asyncio.create_task(self._run(self._take(self._batch)))
            await asyncio.shield(self._current)
            self._current = None

    async def _run(self, jobs: list[_AnswerJob | _PairJob]) -> None:
        try:
            await self._thread.run(self._score, jobs)
        except Exception:
            log.exception("quality scoring: a batch of %s jobs was not stored", len(jobs))
            self._metrics.quality_dropped.labels(KIND).inc(len(jobs))

    # -- in the worker thread ---------------------------------------------------------------

    def _score(self, jobs: list[_AnswerJob | _PairJob]) -> None:
        # Every (scorer, answer) of the batch first, evaluated together (here, or in the
        # child process), then the scores.
        asks: list[tuple[Checker, str, str, str, str]] = []
        texts: list[tuple[str, str] | tuple[str, str, str]] = []
        for job in jobs:
            if isinstance(job, _AnswerJob):
                answer = answer_text(job.served) or ""  # none: an empty answer, a real failure
                prompt = last_user_text(job.served.payload) or ""
                asks += [(c, job.served.route, job.source, answer, prompt) for c in job.verifiers]
                texts.append((answer, prompt))
            else:
                prompt = last_user_text(job.request) or ""
                shadow = text_of(job.shadow_body, stream=False) or ""
                stable = text_of(job.stable_body, stream=_events(job.stable_body)) or ""
                for c in job.verifiers:
                    asks += [(c, job.route, job.source, shadow, prompt)]
                    asks += [(c, job.route, job.source, stable, prompt)]
                texts.append((shadow, stable, prompt))
        verdicts = iter(self._evaluate(asks))
        scores: list[NewScore] = []
        for job in jobs:
            if isinstance(job, _AnswerJob):
                for checker in job.verifiers:
                    verdict = next(verdicts)
                    if verdict is not None:
                        scores.append(_answer_score(job.served, checker.name, verdict))
            else:
                for checker in job.verifiers:
                    shadow_v, stable_v = next(verdicts), next(verdicts)
                    _pair_scores(job, checker.name, shadow_v, stable_v, scores)
        if scores:
            if self._process is not None and self._process.stores:
                self._process.store(scores)
            else:
                self._store.add_scores(scores)
            self._count(scores)

    def _evaluate(self, asks: list[tuple[Checker, str, str, str, str]]) -> list[Verdict | None]:
        """Each checker's verdict on its answer (None: it raised; counted and logged once)."""
        if self._process is None or not asks:
            return [self._verdict(c, answer, prompt) for c, _, _, answer, prompt in asks]
        verdicts: list[Verdict | None] = []
        # One configuration per call: jobs queued before a swap keep theirs.
        for source, group in _by_source(asks):
            answers = self._process.evaluate(
                source, [(route, c.name, answer, prompt) for c, route, _, answer, prompt in group]
            )
            for (checker, *_), got in zip(group, answers, strict=True):
                if isinstance(got, str):
                    self._failed(checker.name, got)
                    verdicts.append(None)
                else:
                    verdicts.append(Verdict(*got))
        return verdicts

    def _verdict(self, verifier: Checker, answer: str, prompt: str) -> Verdict | None:
        try:
            return verifier(answer, prompt)
        except Exception:
            # A bug in the verifier: skip its score, keep the others and the worker.
            self._failed(verifier.name, traceback.format_exc())
            return None

    def _failed(self, name: str, trace: str) -> None:
        self._metrics.quality_scorer_errors.labels(name).inc()
        if name not in self._logged:
            self._logged.add(name)
            log.error(
                "quality scoring: scorer %s failed (logged once; every failure is counted in "
                "gateway_quality_scorer_errors_total):\n%s",
                name,
                trace,
            )

    def _count(self, scores: list[NewScore]) -> None:
        results: Counter[tuple[str, str, str, str]] = Counter()
        sums: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        for s in scores:
            variant = s.variant or "none"
            result = "value" if s.passed is None else "pass" if s.passed else "fail"
            results[(s.route, variant, s.scorer, result)] += 1
            # A Counter cannot go down: paired differences (negative when the candidate does
            # worse) are left out; no verifier gives another negative value.
            if variant != "paired" and s.value > 0:
                sums[(s.route, variant, s.scorer)] += s.value
        for labels, n in results.items():
            self._metrics.quality_scores.labels(*labels).inc(n)
        for key, total in sums.items():
            self._metrics.quality_score_value_sum.labels(*key).inc(total)


# The variant each side of a pair is stored under (None: kept, not aggregated).
_PAIR_VARIANTS: Final[dict[str, str | None]] = {
    "shadow": "shadow",
    "stable": None,
    "paired": "paired",
}


def _answer_score(served: Served, scorer: str, verdict: Verdict) -> NewScore:
    return NewScore(
        subject="",
        tenant=served.tenant,
        request_id=served.request_id,
        scorer=scorer,
        route=served.route,
        version=served.version,
        variant=served.variant,
        rollout_id=served.rollout_id,
        value=verdict.value,
        passed=verdict.passed,
        detail=verdict.detail,
    )


def _pair_scores(
    job: _PairJob,
    name: str,
    shadow: Verdict | None,
    stable: Verdict | None,
    scores: list[NewScore],
) -> None:
    """The candidate's score, the stable one's and their difference."""
    if shadow is not None:
        scores.append(_pair_score(job, name, "shadow", job.shadow_version, shadow))
    if stable is not None:
        scores.append(_pair_score(job, name, "stable", job.stable_version, stable))
    if shadow is not None and stable is not None:
        detail = f"shadow {round(shadow.value, 4)} vs stable {round(stable.value, 4)}"
        difference = Verdict(None, shadow.value - stable.value, detail)
        scores.append(_pair_score(job, name, "paired", job.shadow_version, difference))


def _by_source(
    asks: list[tuple[Checker, str, str, str, str]],
) -> list[tuple[str, list[tuple[Checker, str, str, str, str]]]]:
    """Runs of consecutive asks made from the same configuration, in order."""
    runs: list[tuple[str, list[tuple[Checker, str, str, str, str]]]] = []
    for ask in asks:
        if runs and runs[-1][0] == ask[2]:
            runs[-1][1].append(ask)
        else:
            runs.append((ask[2], [ask]))
    return runs


def _pair_score(job: _PairJob, scorer: str, side: str, version: int, verdict: Verdict) -> NewScore:
    return NewScore(
        subject=f"p{job.pair_id}:{side}",
        scorer=scorer,
        route=job.route,
        version=version,
        variant=_PAIR_VARIANTS[side],
        rollout_id=job.rollout_id,
        value=verdict.value,
        # A difference has no verdict of its own.
        passed=None if side == "paired" else verdict.passed,
        detail=verdict.detail,
    )


def _events(body: str) -> bool:
    # A streamed primary's body is its SSE events; a whole answer is one JSON object. Read
    # off the body rather than the request's `stream`, which the engine parses leniently.
    return not body.lstrip().startswith("{")
