"""The evaluation's answers: one pool over every (set, variant), each answer in its place."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from adapters.evaluate import CONCURRENCY, answer_all
from adapters.train import Example


class SlowClient:
    """Answers `model:prompt` after a random short wait; records the most requests open."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.most = 0
        self.models_open: Counter[str] = Counter()
        self.models_together = 0
        self.rng = random.Random(7)

    def complete(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
            self.models_open[model] += 1
            self.models_together = max(self.models_together, len(+self.models_open))
            wait = self.rng.uniform(0.001, 0.02)
        time.sleep(wait)
        with self.lock:
            self.open -= 1
            self.models_open[model] -= 1
        return f"{model}:{messages[-1]['content']}"


def test_every_answer_lands_in_its_job_and_row_order() -> None:
    client = SlowClient()
    sizes = {"a@1": 5, "base": 40, "a@2": 3}
    jobs = [(model, [Example(f"q{i}", "r") for i in range(n)]) for model, n in sizes.items()]
    seen: dict[int, list[int]] = {}

    def progress(job: int, answered: int) -> None:
        seen.setdefault(job, []).append(answered)

    answers = answer_all(client, jobs, 8, progress)  # type: ignore[arg-type]

    assert answers == [[f"{model}:q{i}" for i in range(n)] for model, n in sizes.items()]
    # Each job's count rises to its size, once per answer.
    assert {job: sorted(counts) for job, counts in seen.items()} == {
        job: list(range(1, n + 1)) for job, n in enumerate(sizes.values())
    }
    # Small jobs do not drain the pool: more than one job is in flight at once, and the
    # pool fills beyond the largest job that fits in it.
    assert client.models_together >= 2
    assert client.most > 5


def test_no_jobs_no_requests() -> None:
    client = SlowClient()
    assert answer_all(client, [], 8) == []  # type: ignore[arg-type]
    assert answer_all(client, [("m", [])], 8) == [[]]  # type: ignore[arg-type]
    assert client.most == 0 and CONCURRENCY >= 16


def test_the_pool_holds_at_most_its_concurrency() -> None:
    client = SlowClient()
    jobs = [("a", [Example(f"q{i}", "r") for i in range(30)])]
    assert len(answer_all(client, jobs, 8, concurrency=3)[0]) == 30  # type: ignore[arg-type]
    assert client.most == 3
