"""A gateway killed with `kill -9` while users' ratings pour in and its answers are being
scored (SQLite and PostgreSQL): after a restart, every rating and score it stored is whole,
each answer has at most one rating, and the per-variant aggregates equal the stored ratings
and scores exactly (no double counting, nothing half written). The fake engine answers: the
response log, the scorers and the registry are under test here."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from gateway.registry.database import make_engine, session_factory
from gateway.registry.quality import SATISFACTION, QualityStore
from gateway.registry.schema import FeedbackRow
from gateway.testing.adapters import write_tiny_tree
from gateway.testing.processes import Processes, answer_of, postgres_database

ENV = {"GATEWAY_QUALITY__FLUSH_S": "0.2", "GATEWAY_ROLLOUT__FLUSH_S": "0.2"}
SCORERS = """
routes:
  pirate:
    sample_rate: 1.0
    scorers:
      - {kind: length, min_chars: 5, max_chars: 100}
      - {kind: regex, name: greets, must: ['hello']}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    with postgres_database("quality") as url:
        yield url


def _canary_at_half(url: str) -> int:
    for version in (1, 2):
        body = {"name": "pirate", "path": f"pirate/v{version}"}
        answer_of(httpx.post(f"{url}/admin/adapters", json=body, timeout=30))
    plan = {"canary": [{"weight": 50}]}
    started = answer_of(
        httpx.post(
            f"{url}/admin/rollouts",
            json={"route": "pirate", "version": 2, "plan": plan},
            timeout=60,
        )
    )
    answer_of(httpx.post(f"{url}/admin/rollouts/pirate/advance", timeout=30))
    answer_of(httpx.put(f"{url}/admin/scorers", content=SCORERS, timeout=30))
    return int(started["id"])


def test_ratings_and_scores_survive_kill_9_with_aggregates_equal_to_the_records(
    tmp_path: Path, database_url: str
) -> None:
    write_tiny_tree(tmp_path, "pirate", versions=2)
    with Processes(tmp_path, database_url, env=dict(ENV)) as running:
        running.start_engine()
        gateway = running.start_gateway()
        rollout_id = _canary_at_half(gateway.url)
        answers: list[str] = []
        variants = set()
        for i in range(40):
            body = {
                "model": "pirate",
                "user": f"user-{i}",
                "messages": [{"role": "user", "content": "Ahoy"}],
            }
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
            answers.append(answer_of(response)["id"])
            variants.add(response.headers["x-variant"])
        assert variants == {"stable", "canary"}

        stop = threading.Event()
        sent = [0]

        def answers_flood() -> None:
            # Answers keep coming, so the scorers are writing when the kill comes.
            with httpx.Client(timeout=5) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    body = {
                        "model": "pirate",
                        "user": f"flood-{n}",
                        "messages": [{"role": "user", "content": "Ahoy"}],
                    }
                    with contextlib.suppress(httpx.HTTPError):
                        client.post(f"{gateway.url}/v1/chat/completions", json=body)

        def flood() -> None:
            rng = random.Random(3)
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    rating = rng.choice([{"thumbs": "up"}, {"thumbs": "down"}, {"score": 3}])
                    with contextlib.suppress(httpx.HTTPError):
                        client.post(
                            f"{gateway.url}/v1/feedback",
                            json={"response_id": rng.choice(answers), **rating},
                        )
                        sent[0] += 1

        threads = [threading.Thread(target=flood) for _ in range(2)]
        threads.append(threading.Thread(target=answers_flood))
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        gateway.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert sent[0] > 20, "the flood did not get going before the kill"

        restarted = running.start_gateway()
        again = httpx.post(
            f"{restarted.url}/v1/feedback",
            json={"response_id": answers[0], "value": 0.9},
            timeout=30,
        )
        assert again.status_code == 200, again.text

    engine = make_engine(database_url)
    try:
        store = QualityStore(session_factory(engine))
        aggregates = store.aggregates(rollout_id)
        assert aggregates == store.recount(rollout_id)
        scored = {signal for (_, signal), t in aggregates.items() if t.count}
        assert {"length", "greets", SATISFACTION} <= scored, aggregates
        with store._sessions() as session:
            rated = session.scalar(select(func.count()).select_from(FeedbackRow))
        counted = sum(t.count for (_, signal), t in aggregates.items() if signal == SATISFACTION)
        assert counted == rated and 0 < rated <= len(answers)
    finally:
        engine.dispose()
