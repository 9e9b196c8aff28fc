"""The LLM judge at run time through the whole app, the fake engine standing in for the base
model: pointwise grades stored under the answer's variant, unreadable ones counted and never
guessed, pairs asked in both orders with a verdict only when the orders agree, and the
judge's own requests never logged as anyone's traffic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.registry.schema import ResponseRow, ScoreRow
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState

CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "Ahoy?"}]}
POINTWISE = "routes: {pirate: {scorers: [{kind: judge, rubric: helpfulness, sample_rate: 1}]}}"
PAIRWISE = (
    "routes: {pirate: {scorers: [{kind: judge, name: duel, rubric: helpfulness, "
    "mode: pairwise, sample_rate: 1}]}}"
)


@pytest.fixture
async def app(settings: Settings, metrics: Metrics, tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings.quality.reward_dir = tmp_path / "reward"
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        yield application


async def configure(client: httpx.AsyncClient, source: str) -> None:
    response = await client.put("/admin/scorers", content=source)
    assert response.status_code == 200, response.text


async def settled(app: FastAPI, metrics: Metrics, gradings: int, stored: int = 0) -> list[ScoreRow]:
    """The stored scores, once `gradings` judge outcomes were counted and at least `stored`
    scores written (a grading is counted before its score is written)."""
    await app.state.responses.flush()
    await app.state.rollouts.flush()
    store = app.state.quality_store
    rows: list[ScoreRow] = []
    for _ in range(200):
        counted = sum(
            s.value
            for family in metrics.registry.collect()
            if family.name == "gateway_quality_judge"
            for s in family.samples
            if s.name.endswith("_total")
        )
        with store._sessions() as session:
            rows = list(session.scalars(select(ScoreRow)).all())
        if counted >= gradings and len(rows) >= stored:
            break
        await asyncio.sleep(0.02)
    return rows


def judged(metrics: Metrics, outcome: str, scorer: str = "judge") -> float:
    labels = {"route": "pirate", "scorer": scorer, "outcome": outcome}
    return metrics.registry.get_sample_value("gateway_quality_judge_total", labels) or 0.0


async def test_a_pointwise_grade_is_stored_and_the_judge_s_request_is_not_logged(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    await configure(client, POINTWISE)
    fake_state.answer = "Score: 7"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    [score] = await settled(app, metrics, 1, stored=1)
    assert (score.scorer, score.value, score.passed, score.variant) == ("judge", 7.0, None, None)
    asked = fake_state.received[-1]
    assert asked["model"] == "smollm2" and "Ahoy?" in asked["messages"][-1]["content"]
    with app.state.quality_store._sessions() as session:
        assert len(session.scalars(select(ResponseRow)).all()) == 1
    assert judged(metrics, "scored") == 1


async def test_an_unreadable_grade_is_counted_and_never_guessed(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    await configure(client, POINTWISE)
    fake_state.answer = "1. The answer is 1. It is good, I think."
    await client.post("/v1/chat/completions", json=CHAT)
    assert await settled(app, metrics, 1) == []
    assert judged(metrics, "unparseable") == 1


@pytest.mark.parametrize(
    ("reply", "outcome", "win"),
    [("Better: A", "disagreed", None), ("Better: tie", "agreed", 0.5)],
)
async def test_pairs_are_asked_in_both_orders_and_scored_only_when_they_agree(
    app: FastAPI,
    client: httpx.AsyncClient,
    fake_state: FakeEngineState,
    metrics: Metrics,
    reply: str,
    outcome: str,
    win: float | None,
) -> None:
    await configure(client, PAIRWISE)
    started = await client.post("/admin/rollouts", json={"route": "pirate", "version": 2})
    assert started.status_code == 201, started.text
    fake_state.answer = reply
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    await asyncio.sleep(0.2)  # the shadow copy answers
    scores = await settled(app, metrics, 1, stored=0 if win is None else 1)
    # Always "A" means the first answer shown, whichever it is: the orders disagree.
    assert judged(metrics, outcome, "duel") == 1
    judge_requests = [r for r in fake_state.received if "Answer A" in str(r.get("messages"))]
    assert len(judge_requests) == 2
    if win is None:
        assert scores == []
    else:
        [score] = scores
        assert (score.variant, score.value, score.passed) == ("paired", win, None)
