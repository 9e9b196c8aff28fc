"""Quality records on SQLite and PostgreSQL: aggregates that always equal the stored ratings
and scores (also with two replicas rating at once), a bounded sample that does not depend on
write order, and migrations that match the models."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from gateway.registry import database
from gateway.registry.quality import (
    RESERVOIR_SLOTS,
    SATISFACTION,
    NewScore,
    QualityStore,
    Rating,
    Totals,
)
from gateway.registry.schema import Adapter, Base, RolloutRow, RolloutStage, utcnow

LONG_AGO = utcnow() - timedelta(days=365)


@pytest.fixture
def store(engine: Engine) -> QualityStore:
    database.upgrade(engine)
    return QualityStore(database.session_factory(engine))


def rollout(store: QualityStore) -> int:
    with store._sessions.begin() as session:
        session.add(Adapter(name="pirate", stable_version=1))
        row = RolloutRow(
            route="pirate",
            active_route="pirate",
            stable_version=1,
            candidate_version=2,
            stage=RolloutStage.CANARY,
            paused=False,
            step=0,
            weight=50.0,
            plan={},
            pinned_candidate=False,
            created_by="test",
        )
        session.add(row)
        session.flush()
        return row.id


def responses(store: QualityStore, rollout_id: int, n: int, tenant: str = "acme") -> None:
    store.add_responses(
        [
            {
                "request_id": f"req-{i}",
                "tenant": tenant,
                "at": utcnow(),
                "endpoint": "/v1/chat/completions",
                "route": "pirate",
                "version": 2 if i % 2 else 1,
                "variant": "canary" if i % 2 else "stable",
                "rollout_id": rollout_id,
                "status": 200,
                "stream": False,
                "latency_ms": 12.0,
                "ttft_ms": None,
                "prompt_tokens": 3,
                "completion_tokens": 5,
                "prompt_text": None,
                "answer_text": None,
            }
            for i in range(n)
        ]
    )


def thumbs(up: bool) -> Rating:
    return Rating({"thumbs": "up" if up else "down"}, 1.0 if up else 0.0, None, [])


def test_migrations_match_the_models(store: QualityStore, engine: Engine) -> None:
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    # Index and type spellings differ between dialects; tables and columns must not.
    structural = [
        d for d in diff if d[0] in ("add_table", "remove_table", "add_column", "remove_column")
    ]
    assert structural == []


def test_ratings_changed_many_times_leave_aggregates_equal_to_the_records(
    store: QualityStore,
) -> None:
    rollout_id = rollout(store)
    responses(store, rollout_id, 20)
    rng = random.Random(7)
    for _ in range(200):
        i = rng.randrange(20)
        value = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
        store.put_feedback(
            "acme", f"req-{i}", Rating({"value": value}, value, None, []), newer_than=LONG_AGO
        )
    aggregates = store.aggregates(rollout_id)
    assert aggregates == store.recount(rollout_id)
    stable, canary = aggregates[("stable", SATISFACTION)], aggregates[("canary", SATISFACTION)]
    assert stable.count + canary.count == 20
    assert stable.passes + stable.fails <= stable.count


def test_scores_are_stored_once_per_subject_and_scorer(store: QualityStore) -> None:
    rollout_id = rollout(store)
    responses(store, rollout_id, 4)
    scores = [
        NewScore(
            "",
            "shouted",
            "pirate",
            2,
            "canary",
            rollout_id,
            0.9,
            True,
            tenant="acme",
            request_id="req-1",
        ),
        NewScore(
            "",
            "shouted",
            "pirate",
            1,
            "stable",
            rollout_id,
            0.1,
            False,
            tenant="acme",
            request_id="req-2",
        ),
        NewScore("p1:shadow", "shouted", "pirate", 2, "shadow", rollout_id, 1.0, True),
        NewScore("p1:paired", "shouted", "pirate", None, "paired", rollout_id, -0.5, None),
        # The response expired: nothing to tie the score to.
        NewScore(
            "",
            "shouted",
            "pirate",
            1,
            "stable",
            rollout_id,
            0.1,
            False,
            tenant="acme",
            request_id="gone",
        ),
    ]
    assert store.add_scores(scores) == 4
    assert store.add_scores(scores) == 0
    aggregates = store.aggregates(rollout_id)
    assert aggregates == store.recount(rollout_id)
    assert aggregates[("paired", "shouted")] == Totals(1, -0.5, 0.25, 0, 0)
    assert aggregates[("canary", "shouted")].passes == 1


def test_the_sample_is_bounded_and_the_same_whatever_the_order(engine: Engine) -> None:
    database.upgrade(engine)
    store = QualityStore(database.session_factory(engine))
    rollout_id = rollout(store)
    items = [(f"p{i}:shadow", float(i)) for i in range(RESERVOIR_SLOTS * 3)]

    def offer(order: list[tuple[str, float]], scorer: str) -> list[float]:
        store.add_scores(
            NewScore(subject, scorer, "pirate", 2, "shadow", rollout_id, value, None)
            for subject, value in order
        )
        return sorted(store.reservoir(rollout_id, "shadow", scorer))

    forwards = offer(items, "length")
    backwards = offer(list(reversed(items)), "length_again")
    assert forwards == backwards
    assert RESERVOIR_SLOTS * 0.9 < len(forwards) <= RESERVOIR_SLOTS


# Several gateway replicas share PostgreSQL, never SQLite.
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_two_replicas_rating_at_once_keep_the_aggregates_exact(engine: Engine) -> None:
    database.upgrade(engine)
    first, second = (QualityStore(database.session_factory(engine)) for _ in range(2))
    rollout_id = rollout(first)
    responses(first, rollout_id, 6)

    def rate(job: tuple[QualityStore, int, bool]) -> Any:
        store, i, up = job
        return store.put_feedback("acme", f"req-{i % 6}", thumbs(up), newer_than=LONG_AGO)

    jobs = [(first if n % 2 else second, n, n % 3 == 0) for n in range(120)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(rate, jobs))
    assert first.aggregates(rollout_id) == first.recount(rollout_id)
    totals = first.aggregates(rollout_id)
    assert sum(t.count for t in totals.values()) == 6
