"""The scorers through the whole app with the fake engine: the configuration is seeded, read,
replaced whole (a bad one refused with every problem listed, the one in use still scoring),
and the verifiers score sampled answers and shadow pairs off the request path, per variant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.quality.config import read_scorer_source
from gateway.registry.schema import AuditEvent, ScoreRow
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState

SHOUTED = """
routes:
  pirate:
    sample_rate: 1.0
    scorers:
      - kind: caps_share
        name: shouted
        min: 0.6
      - kind: length
        max_chars: 20
"""
BAD = """
sample_rate: 2
routes:
  pirate:
    scorers:
      - kind: regex
        must: ['(']
      - kind: language
        expect: xx
      - kind: telepathy
"""
CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "Ahoy"}]}


@pytest.fixture
async def app(settings: Settings, metrics: Metrics, tmp_path: Path) -> AsyncIterator[FastAPI]:
    seed = tmp_path / "scorers.yaml"
    # The demo's verifiers only: its reward heads are trained by `lora-gateway prepare`.
    lines = read_scorer_source("demo").splitlines(keepends=True)
    kept = [
        line
        for i, line in enumerate(lines)
        if "kind: reward" not in line and "kind: reward" not in lines[i - 1]
    ]
    seed.write_text("".join(kept))
    settings.quality.scorers = str(seed)
    settings.quality.reward_dir = tmp_path / "reward"
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        yield application


async def put(client: httpx.AsyncClient, source: str, **params: Any) -> httpx.Response:
    return await client.put(
        "/admin/scorers",
        content=source,
        params=params,
        headers={"content-type": "application/yaml"},
    )


async def scores(app: FastAPI) -> list[ScoreRow]:
    await app.state.responses.flush()
    await app.state.rollouts.flush()
    for _ in range(100):
        if app.state.scoring.depth == 0:
            break
        await asyncio.sleep(0.02)
    await app.state.scoring.stop()  # drains the queue
    await app.state.scoring.start()
    store = app.state.quality_store
    with store._sessions() as session:
        return list(session.scalars(select(ScoreRow).order_by(ScoreRow.id)).all())


async def test_the_seeded_configuration_is_shown(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/scorers")
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["created_by"] == "gateway:seed" and out["stored"]
    assert {s["name"] for s in out["routes"]["french"]} >= {"answer_is_french", "refusal"}
    assert "routes:" in out["source"]


async def test_a_bad_configuration_lists_every_problem_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    before = (await client.get("/admin/scorers")).json()
    response = await put(client, BAD)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_scorer_config"
    for fragment in ("sample_rate", "regex", "xx", "telepathy"):
        assert fragment in error["message"], (fragment, error["message"])
    assert (await client.get("/admin/scorers")).json() == before
    audit = (await client.get("/admin/audit", params={"limit": 1000})).json()["data"]
    assert [e["action"] for e in audit].count("scorers:refused") == 1


async def test_a_dry_run_checks_without_storing(client: httpx.AsyncClient) -> None:
    before = (await client.get("/admin/scorers")).json()
    checked = await put(client, SHOUTED, dry_run="true")
    assert checked.status_code == 200 and checked.json()["stored"] is False
    assert (await client.get("/admin/scorers")).json() == before


@pytest.mark.parametrize("body", [b"", b"   ", b"\xff\xfe"])
async def test_an_empty_or_undecodable_body_is_a_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.put("/admin/scorers", content=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "scorers"


async def test_sampled_answers_are_scored_per_variant_off_the_request_path(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    assert (await put(client, SHOUTED, reason="caps")).status_code == 200
    fake_state.answer = "ARR, THE TREASURE BE BURIED!"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    fake_state.answer = "it is buried"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    got = {(s.response_id, s.scorer): (s.passed, s.value) for s in await scores(app)}
    assert got[(1, "shouted")] == (True, 1.0)
    assert got[(2, "shouted")] == (False, 0.0)
    assert got[(1, "length")][0] is False and got[(2, "length")] == (True, 12.0)
    labels = {"route": "pirate", "variant": "none", "scorer": "shouted", "result": "pass"}
    assert metrics.registry.get_sample_value("gateway_quality_scores_total", labels) == 1


async def test_shadow_pairs_are_scored_on_both_answers_with_their_difference(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    assert (await put(client, SHOUTED)).status_code == 200
    started = await client.post(
        "/admin/rollouts",
        json={"route": "pirate", "version": 2, "plan": {"canary": [{"weight": 50}]}},
    )
    assert started.status_code == 201, started.text
    rollout_id = started.json()["id"]
    fake_state.answer = "quiet words"
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    await asyncio.sleep(0.2)  # the shadow copies answer
    rows = await scores(app)
    shadow = [s for s in rows if s.variant == "shadow" and s.scorer == "shouted"]
    paired = [s for s in rows if s.variant == "paired" and s.scorer == "shouted"]
    stable = [s for s in rows if s.variant == "stable" and s.scorer == "shouted"]
    assert len(shadow) == len(paired) == 3 and len(stable) == 3
    assert all(s.value == 0.0 for s in paired)  # the fake answers both the same way
    store = app.state.quality_store
    assert store.aggregates(rollout_id) == store.recount(rollout_id)
    assert store.aggregates(rollout_id)[("shadow", "shouted")].count == 3
    status = (await client.get("/admin/rollouts/pirate")).json()
    signals = {(s["variant"], s["signal"]): s for s in status["signals"]}
    assert signals[("shadow", "shouted")] == {
        "variant": "shadow",
        "signal": "shouted",
        "count": 3,
        "mean": 0.0,
        "sd": 0.0,
        "passes": 0,
        "fails": 3,
    }
    assert signals[("paired", "length")]["mean"] == 0.0
    assert [s["variant"] for s in status["signals"] if s["signal"] == "shouted"] == [
        "stable",
        "shadow",
        "paired",
    ]


async def test_a_replaced_configuration_is_audited_and_used_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await put(client, SHOUTED, reason="only caps")).status_code == 200
    assert app.state.scoring.rate("pirate") == 1.0 and app.state.scoring.rate("french") == 0.0
    store = app.state.quality_store
    with store._sessions() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "scorers:replace").order_by(AuditEvent.id)
        ).all()[-1]
    assert event.reason == "only caps" and event.detail["routes"] == {
        "pirate": ["shouted", "length"]
    }


async def test_the_demo_seed_without_its_reward_heads_is_refused_and_scores_nothing(
    settings: Settings, metrics: Metrics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings.quality.scorers = "demo"
    settings.quality.reward_dir = tmp_path / "no-heads"
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        assert application.state.scorers.active is None
        assert application.state.scoring.rate("pirate") == 0.0
    assert "no reward head 'pirate'" in caplog.text
