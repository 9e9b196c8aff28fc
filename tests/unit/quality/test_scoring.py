"""Verifier scoring off the request path: what is scored, what it is stored under, what the
aggregates become, and how the queue stays bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import InvalidScorerConfig
from gateway.metrics import Metrics
from gateway.quality.config import (
    BuiltScorer,
    RewardSpec,
    ScorerConfig,
    parse_scorer_config,
    read_scorer_source,
)
from gateway.quality.offload import ChildSettings, ScoringProcess
from gateway.quality.records import Served, utc
from gateway.quality.rewards import RewardScorer
from gateway.quality.scoring import Scoring
from gateway.quality.verdict import Verdict, Verifier
from gateway.registry import database
from gateway.registry.quality import NewScore, QualityStore
from gateway.registry.schema import (
    Adapter,
    ResponseRow,
    RolloutRow,
    RolloutStage,
    ScoreRow,
    ShadowPairRow,
)

SHOUTED = (
    "WOW! THE MOON IS EARTH'S ONLY NATURAL SATELLITE!!! IT REFLECTS THE LIGHT OF THE SUN "
    "AND ITS GRAVITY PULLS ON THE OCEANS TO MAKE THE TIDES!!!"
)
PLAIN = (
    "The moon is Earth's only natural satellite. It reflects the light of the sun, and its "
    "gravity pulls on the oceans to make the tides."
)
QUESTION = {"messages": [{"role": "user", "content": "Tell me about the moon."}]}
SHOUT_SCORERS = {"shouted", "length", "refusal"}
DEMO = parse_scorer_config(read_scorer_source("demo"))


def answer(text: str) -> str:
    return json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    )


def events(text: str) -> str:
    """`text` as a stream's SSE events, a few characters a chunk."""
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    lines = [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": chunk}}]})
        for chunk in chunks
    ]
    return "\n\n".join([*lines, "data: [DONE]"]) + "\n\n"


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = database.make_engine(database.default_url(tmp_path))
    database.upgrade(engine)
    return database.session_factory(engine)


@pytest.fixture
def store(sessions: sessionmaker[Session]) -> QualityStore:
    return QualityStore(sessions)


@pytest.fixture
def rollout_id(sessions: sessionmaker[Session]) -> int:
    return new_rollout(sessions)


def new_rollout(sessions: sessionmaker[Session]) -> int:
    """A rollout of shout (in shadow), for scores to be aggregated under."""
    with sessions.begin() as session:
        session.add(Adapter(name="shout", stable_version=1))
        row = RolloutRow(
            route="shout",
            active_route="shout",
            stable_version=1,
            candidate_version=2,
            stage=RolloutStage.SHADOW,
            plan={},
            created_by="test",
        )
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def scoring(store: QualityStore, metrics: Metrics) -> Scoring:
    scoring = Scoring(store, metrics)
    scoring.use(DEMO)
    return scoring


def served(request_id: str, text: str | None = SHOUTED, **fields: Any) -> Served:
    values: dict[str, Any] = {
        "request_id": request_id,
        "tenant": "acme",
        "endpoint": "/v1/chat/completions",
        "route": "shout",
        "version": 1,
        "variant": None,
        "rollout_id": None,
        "status": 200,
        "stream": False,
        "at": 1_700_000_000.0,
        "latency_s": 0.5,
        "ttft_s": None,
        "draw": 0.5,
        "payload": QUESTION,
        "body": (answer(text) if text is not None else '{"choices": []}').encode(),
    }
    return Served(**{**values, **fields})


def logged(store: QualityStore, batch: list[Served]) -> list[Served]:
    """Store the batch's response records, as the response log does before its listeners."""
    store.add_responses(
        [
            {
                "request_id": s.request_id,
                "tenant": s.tenant,
                "at": utc(s.at),
                "endpoint": s.endpoint,
                "route": s.route,
                "version": s.version,
                "variant": s.variant,
                "rollout_id": s.rollout_id,
                "status": s.status,
                "stream": s.stream,
                "latency_ms": s.latency_s * 1000,
            }
            for s in batch
        ]
    )
    return batch


async def scored(scoring: Scoring, batch: list[Served]) -> None:
    await scoring.start()
    scoring.submit(batch)
    await scoring.stop()


def stored(sessions: sessionmaker[Session]) -> dict[tuple[str, str], ScoreRow]:
    """Every stored score by (subject, scorer)."""
    with sessions() as session:
        return {(r.subject, r.scorer): r for r in session.scalars(select(ScoreRow)).all()}


def pair(
    sessions: sessionmaker[Session], rollout_id: int, stable: str, shadow: str, **fields: Any
) -> ShadowPairRow:
    """A shadow pair stored as the rollout manager stores them (so it has an id)."""
    values: dict[str, Any] = {
        "rollout_id": rollout_id,
        "request_id": "req-pair",
        "endpoint": "/v1/chat/completions",
        "request": {"model": "shout", **QUESTION},
        "primary_version": 1,
        "primary_status": 200,
        "primary_body": stable,
        "primary_ms": 400.0,
        "shadow_version": 2,
        "shadow_status": 200,
        "shadow_body": shadow,
        "shadow_ms": 450.0,
    }
    row = ShadowPairRow(**{**values, **fields})
    with sessions.begin() as session:
        session.add(row)
    return row


def response_id(sessions: sessionmaker[Session], request_id: str) -> int | None:
    with sessions() as session:
        return session.scalar(select(ResponseRow.id).where(ResponseRow.request_id == request_id))


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class Raising:
    """A verifier check with a bug."""

    def __call__(self, text: str, length: int) -> Verdict:
        raise ZeroDivisionError("a bug")


def config_with(route: str, *scorers: BuiltScorer) -> ScorerConfig:
    return ScorerConfig(DEMO.source, DEMO.spec, {route: scorers})


# -- served answers ----------------------------------------------------------------------


async def test_sampled_verifiers_score_an_answer_under_the_variant_that_served_it(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session], rollout_id: int
) -> None:
    batch = logged(
        store,
        [
            served("a", SHOUTED, variant="stable", rollout_id=rollout_id),
            served("b", PLAIN, variant="canary", version=2, rollout_id=rollout_id),
        ],
    )

    await scored(scoring, batch)

    scores = stored(sessions)
    assert {scorer for _, scorer in scores} == SHOUT_SCORERS
    assert len(scores) == 6
    shouted = {row.variant: row for (_, scorer), row in scores.items() if scorer == "shouted"}
    assert shouted["stable"].passed is True and shouted["stable"].response_id is not None
    assert shouted["canary"].passed is False and shouted["canary"].version == 2
    aggregates = store.aggregates(rollout_id)
    assert aggregates == store.recount(rollout_id)
    assert aggregates[("stable", "shouted")].passes == 1
    assert aggregates[("canary", "shouted")].fails == 1
    assert aggregates[("canary", "length")].passes == 1


async def test_scores_are_counted_in_metrics_per_variant_and_result(
    scoring: Scoring, store: QualityStore, metrics: Metrics
) -> None:
    await scored(scoring, logged(store, [served("a", SHOUTED), served("b", PLAIN)]))

    labels = {"route": "shout", "variant": "none", "scorer": "shouted"}
    assert sample(metrics, "gateway_quality_scores_total", **labels, result="pass") == 1
    assert sample(metrics, "gateway_quality_scores_total", **labels, result="fail") == 1
    value_sum = sample(metrics, "gateway_quality_score_value_sum_total", **labels)
    assert value_sum is not None and 1.0 < value_sum < 1.2  # all capitals + a few


async def test_a_draw_above_a_scorers_rate_skips_that_scorer(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session]
) -> None:
    rare = parse_scorer_config(
        """
        routes:
          shout:
            sample_rate: 1.0
            scorers:
              - {kind: caps_share, name: shouted, min: 0.6, sample_rate: 0.2}
              - {kind: length, min_chars: 10}
        """
    )
    scoring.use(rare)

    await scored(scoring, logged(store, [served("a", draw=0.5), served("b", draw=0.1)]))

    scores = stored(sessions)
    assert sorted(scorer for _, scorer in scores) == ["length", "length", "shouted"]


async def test_an_answer_whose_payload_was_not_kept_is_not_scored(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session]
) -> None:
    await scored(scoring, logged(store, [served("a", payload=None)]))

    assert stored(sessions) == {}
    assert scoring.depth == 0


async def test_a_failed_answer_is_not_scored(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session]
) -> None:
    await scored(scoring, logged(store, [served("a", status=500), served("b", status=429)]))

    assert stored(sessions) == {}


async def test_an_answer_without_text_is_scored_as_an_empty_answer(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session]
) -> None:
    await scored(scoring, logged(store, [served("a", text=None)]))

    scores = {scorer: row for (_, scorer), row in stored(sessions).items()}
    assert scores["length"].passed is False and scores["length"].value == 0.0
    assert scores["shouted"].passed is False


async def test_a_streamed_answer_is_scored_from_its_events(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session]
) -> None:
    stream = served("a", stream=True, body=events(SHOUTED).encode())

    await scored(scoring, logged(store, [stream]))

    scores = {scorer: row for (_, scorer), row in stored(sessions).items()}
    assert scores["shouted"].passed is True
    assert scores["length"].value == len(SHOUTED)


REWARDED = """
routes:
  shout:
    sample_rate: 1.0
    scorers:
      - {kind: judge, rubric: helpfulness}
      - {kind: reward, head: loud}
"""


class _Loudness:
    """A reward model that likes exclamation marks."""

    name = "fake:loud"

    def score(self, prompt: str, answer: str) -> float:
        return float(answer.count("!"))


async def test_reward_scorers_run_here_with_a_value_and_no_verdict_and_judges_do_not(
    store: QualityStore, sessions: sessionmaker[Session], metrics: Metrics
) -> None:
    loaded: list[str] = []

    def rewards(name: str, spec: RewardSpec) -> RewardScorer:
        loaded.append(f"{name}:{spec.head}")
        return RewardScorer(name, _Loudness())

    scoring = Scoring(store, metrics, rewards=rewards)
    scoring.use(parse_scorer_config(REWARDED))
    assert loaded == ["reward:loud"] and scoring.rate("shout") == 1.0
    await scored(scoring, logged(store, [served("a")]))
    [reward] = stored(sessions).values()
    assert (reward.scorer, reward.value, reward.passed) == ("reward", SHOUTED.count("!"), None)
    assert reward.detail == "fake:loud"


async def test_a_reward_head_that_cannot_be_loaded_refuses_the_configuration(
    store: QualityStore, metrics: Metrics
) -> None:
    def rewards(name: str, spec: RewardSpec) -> RewardScorer:
        raise FileNotFoundError(f"no reward head {spec.head!r}")

    scoring = Scoring(store, metrics, rewards=rewards)
    with pytest.raises(
        InvalidScorerConfig, match=r"routes.shout.scorers\[1\]: no reward head 'loud'"
    ):
        scoring.use(parse_scorer_config(REWARDED))
    assert scoring.rate("shout") == 0.0  # the configuration in use is unchanged


async def test_a_raising_verifier_is_counted_and_logged_once_and_the_others_still_score(
    scoring: Scoring,
    store: QualityStore,
    sessions: sessionmaker[Session],
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [shouted, length, _, _] = DEMO.for_route("shout")
    broken = BuiltScorer("shout", shouted.spec, 1.0, Verifier("broken", "caps_share", Raising()))
    scoring.use(config_with("shout", broken, length))

    with caplog.at_level(logging.ERROR, logger="gateway.quality.scoring"):
        await scored(scoring, logged(store, [served("a"), served("b"), served("c")]))

    assert sorted(scorer for _, scorer in stored(sessions)) == ["length"] * 3
    assert sample(metrics, "gateway_quality_scorer_errors_total", scorer="broken") == 3
    [logged_once] = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert logged_once.startswith(
        "quality scoring: scorer broken failed (logged once; every failure is counted in "
        "gateway_quality_scorer_errors_total):\n"
    )
    assert "ZeroDivisionError: a bug" in logged_once


async def test_a_batch_the_store_refuses_is_dropped_and_the_worker_goes_on(
    sessions: sessionmaker[Session], metrics: Metrics
) -> None:
    class FailsOnce(QualityStore):
        failed = False

        def add_scores(self, scores: Iterable[NewScore]) -> int:
            if not self.failed:
                self.failed = True
                raise RuntimeError("database is locked")
            return super().add_scores(scores)

    store = FailsOnce(sessions)
    scoring = Scoring(store, metrics)
    scoring.use(DEMO)
    await scoring.start()
    scoring.submit(logged(store, [served("a")]))
    for _ in range(500):
        if sample(metrics, "gateway_quality_dropped_total", kind="verifier"):
            break
        await asyncio.sleep(0.01)
    scoring.submit(logged(store, [served("b")]))
    await scoring.stop()

    assert sample(metrics, "gateway_quality_dropped_total", kind="verifier") == 1
    assert {row.response_id for row in stored(sessions).values()} == {response_id(sessions, "b")}


# -- the queue ---------------------------------------------------------------------------


def test_a_full_queue_drops_and_counts_and_stays_bounded(
    store: QualityStore, metrics: Metrics
) -> None:
    scoring = Scoring(store, metrics, max_queue=100)
    scoring.use(DEMO)
    one = served("a")

    for _ in range(500):
        scoring.submit([one] * 100)

    assert scoring.depth == 100
    assert sample(metrics, "gateway_quality_dropped_total", kind="verifier") == 49_900
    assert sample(metrics, "gateway_quality_queue_depth", kind="verifier") == 100


def test_a_full_queue_drops_pairs_too(
    sessions: sessionmaker[Session], store: QualityStore, metrics: Metrics, rollout_id: int
) -> None:
    scoring = Scoring(store, metrics, max_queue=10)
    scoring.use(DEMO)
    row = pair(sessions, rollout_id, answer(PLAIN), answer(SHOUTED))

    scoring.submit_pairs([row] * 25, "shout")

    assert scoring.depth == 10
    assert sample(metrics, "gateway_quality_dropped_total", kind="verifier") == 15


async def test_stop_scores_what_is_queued(
    scoring: Scoring, store: QualityStore, sessions: sessionmaker[Session]
) -> None:
    await scoring.start()
    scoring.submit(logged(store, [served("a"), served("b"), served("c")]))
    await scoring.stop()

    assert len(stored(sessions)) == 9
    assert scoring.depth == 0


async def test_stop_scores_at_most_one_more_batch_and_counts_the_rest_dropped(
    store: QualityStore, sessions: sessionmaker[Session], metrics: Metrics
) -> None:
    scoring = Scoring(store, metrics, batch=4)
    scoring.use(DEMO)
    scoring.submit(logged(store, [served(f"r{i}") for i in range(10)]))

    await scoring.stop()

    assert len({row.response_id for row in stored(sessions).values()}) == 4
    assert sample(metrics, "gateway_quality_dropped_total", kind="verifier") == 6
    assert scoring.depth == 0
    assert sample(metrics, "gateway_quality_queue_depth", kind="verifier") == 0


# -- shadow pairs ------------------------------------------------------------------------


async def test_a_pair_gives_shadow_stable_and_paired_scores(
    scoring: Scoring,
    store: QualityStore,
    sessions: sessionmaker[Session],
    metrics: Metrics,
    rollout_id: int,
) -> None:
    row = pair(sessions, rollout_id, stable=answer(PLAIN), shadow=answer(SHOUTED))

    await scoring.start()
    scoring.submit_pairs([row], "shout")
    await scoring.stop()

    scores = stored(sessions)
    assert len(scores) == 9  # three scorers, three sides
    shadow = scores[(f"p{row.id}:shadow", "shouted")]
    stable = scores[(f"p{row.id}:stable", "shouted")]
    paired = scores[(f"p{row.id}:paired", "shouted")]
    assert (shadow.variant, shadow.version, shadow.passed) == ("shadow", 2, True)
    assert (stable.variant, stable.version, stable.passed) == (None, 1, False)
    assert paired.variant == "paired" and paired.passed is None
    assert paired.value == pytest.approx(shadow.value - stable.value)
    assert paired.value > 0.5
    assert paired.detail == "shadow 1.0 vs stable 0.0288"  # 3 capitals of 104 letters
    assert {row.rollout_id for row in scores.values()} == {rollout_id}
    aggregates = store.aggregates(rollout_id)
    assert aggregates == store.recount(rollout_id)
    # The stable side is a record only: stable answers are aggregated from the response log.
    assert {variant for variant, _ in aggregates} == {"shadow", "paired"}
    assert aggregates[("paired", "shouted")].total == pytest.approx(paired.value)
    labels = {"route": "shout", "scorer": "shouted"}
    assert (
        sample(metrics, "gateway_quality_scores_total", **labels, variant="paired", result="value")
        == 1
    )
    assert (
        sample(metrics, "gateway_quality_score_value_sum_total", **labels, variant="paired") is None
    )


async def test_a_pair_with_a_worse_candidate_gets_a_negative_difference(
    scoring: Scoring, sessions: sessionmaker[Session], store: QualityStore, rollout_id: int
) -> None:
    row = pair(sessions, rollout_id, stable=answer(SHOUTED), shadow=answer(PLAIN))

    await scoring.start()
    scoring.submit_pairs([row], "shout")
    await scoring.stop()

    paired = stored(sessions)[(f"p{row.id}:paired", "shouted")]
    assert paired.value < -0.5
    assert store.aggregates(rollout_id)[("paired", "shouted")].total == pytest.approx(paired.value)


async def test_a_streamed_primary_is_read_from_its_events(
    scoring: Scoring, sessions: sessionmaker[Session], rollout_id: int
) -> None:
    row = pair(sessions, rollout_id, stable=events(SHOUTED), shadow=answer(SHOUTED))

    await scoring.start()
    scoring.submit_pairs([row], "shout")
    await scoring.stop()

    scores = stored(sessions)
    assert scores[(f"p{row.id}:stable", "shouted")].passed is True
    assert scores[(f"p{row.id}:stable", "length")].value == len(SHOUTED)
    assert scores[(f"p{row.id}:paired", "shouted")].value == pytest.approx(0.0)


async def test_a_pair_with_a_failed_side_is_not_scored(
    scoring: Scoring, sessions: sessionmaker[Session], rollout_id: int
) -> None:
    failed_shadow = pair(sessions, rollout_id, answer(PLAIN), "{}", shadow_status=500)
    failed_primary = pair(sessions, rollout_id, "{}", answer(SHOUTED), primary_status=503)

    await scoring.start()
    scoring.submit_pairs([failed_shadow, failed_primary], "shout")
    await scoring.stop()

    assert stored(sessions) == {}


async def test_pairs_are_scored_by_every_verifier_whatever_its_rate(
    scoring: Scoring, sessions: sessionmaker[Session], rollout_id: int
) -> None:
    scoring.use(
        parse_scorer_config(
            "routes: {shout: {scorers: [{kind: caps_share, name: shouted, min: 0.6, "
            "sample_rate: 0.0}]}}"
        )
    )
    row = pair(sessions, rollout_id, answer(PLAIN), answer(SHOUTED))

    await scoring.start()
    scoring.submit_pairs([row], "shout")
    await scoring.stop()

    assert {side for side, _ in stored(sessions)} == {
        f"p{row.id}:shadow",
        f"p{row.id}:stable",
        f"p{row.id}:paired",
    }


# -- configuration -----------------------------------------------------------------------


def test_rate_is_the_largest_verifier_rate_of_the_route(scoring: Scoring) -> None:
    scoring.use(
        parse_scorer_config(
            """
            sample_rate: 0.05
            routes:
              shout:
                scorers:
                  - {kind: caps_share, min: 0.6, sample_rate: 0.2}
                  - {kind: length, min_chars: 10}
                  - {kind: judge, rubric: helpfulness, sample_rate: 0.9}
              pirate:
                scorers: [{kind: judge, rubric: helpfulness}]
            """
        )
    )

    assert scoring.rate("shout") == 0.2
    assert scoring.rate("pirate") == 0.0
    assert scoring.rate("unknown") == 0.0


async def test_use_swaps_the_configuration(
    store: QualityStore, sessions: sessionmaker[Session], metrics: Metrics
) -> None:
    scoring = Scoring(store, metrics)
    assert scoring.rate("shout") == 0.0
    scoring.submit(logged(store, [served("a")]))
    assert scoring.depth == 0

    scoring.use(DEMO)

    assert scoring.config is DEMO
    assert scoring.rate("shout") == 1.0
    await scored(scoring, logged(store, [served("b")]))
    assert len(stored(sessions)) == 3


# -- in a child process ------------------------------------------------------------------

VERIFIERS_ONLY = parse_scorer_config(
    "\n".join(
        line
        for line in read_scorer_source("demo").splitlines()
        if "kind: reward" not in line and "head:" not in line
    )
)


def child(tmp_path: Path, database_url: str | None = None) -> ScoringProcess:
    settings = ChildSettings(tmp_path / "reward", tmp_path / "cache", None, None, 64, database_url)
    return ScoringProcess(settings)


async def test_a_child_process_scores_exactly_what_the_thread_scores(
    tmp_path: Path, metrics: Metrics
) -> None:
    results = []
    for mode in ("thread", "child evaluates", "child evaluates and stores"):
        db = tmp_path / mode.replace(" ", "-")
        db.mkdir()
        url = database.default_url(db)
        process = {
            "thread": None,
            "child evaluates": child(tmp_path),
            "child evaluates and stores": child(tmp_path, url),
        }[mode]
        engine = database.make_engine(url)
        database.upgrade(engine)
        sessions = database.session_factory(engine)
        store = QualityStore(sessions)
        rollout = new_rollout(sessions)
        scoring = Scoring(store, metrics, process=process)
        scoring.use(VERIFIERS_ONLY)
        await scoring.start()
        scoring.submit(logged(store, [served("a"), served("b", PLAIN)]))
        scoring.submit_pairs([pair(sessions, rollout, answer(PLAIN), answer(SHOUTED))], "shout")
        await scoring.stop()
        results.append(
            sorted((k, r.value, r.passed, r.detail) for k, r in stored(sessions).items())
        )
    thread, in_child, stored_by_child = results
    assert len(thread) == 2 * 3 + 3 * 3 and in_child == thread and stored_by_child == thread


async def test_a_child_that_dies_costs_its_batch_and_is_started_again(
    tmp_path: Path, store: QualityStore, sessions: sessionmaker[Session], metrics: Metrics
) -> None:
    process = child(tmp_path)
    scoring = Scoring(store, metrics, process=process)
    scoring.use(VERIFIERS_ONLY)
    await scoring.start()
    scoring.submit(logged(store, [served("a")]))
    for _ in range(500):
        if stored(sessions):
            break
        await asyncio.sleep(0.02)
    [pid] = list(process._pool._processes)  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    scoring.submit(logged(store, [served("b")]))
    for _ in range(500):
        if sample(metrics, "gateway_quality_dropped_total", kind="verifier"):
            break
        await asyncio.sleep(0.02)
    scoring.submit(logged(store, [served("c")]))
    await scoring.stop()
    scored_ids = {row.response_id for row in stored(sessions).values()}
    assert sample(metrics, "gateway_quality_dropped_total", kind="verifier") == 1
    assert scored_ids == {response_id(sessions, "a"), response_id(sessions, "c")}
