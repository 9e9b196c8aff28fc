"""The rollout analysis through the whole app on the fake engine: the verifier of the route
scores every answer, the SLOs name it, and the analysis moves rollouts by itself.

The looks are taken by hand here (`look_all`), after the response log, the shadow pairs and
the scorers have written everything, so each test is deterministic; one test lets the
analysis loop run on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState

SCORERS = """
routes:
  pirate:
    sample_rate: 1.0
    scorers:
      - {kind: regex, name: pirate_voice, must: ['\\barr\\b']}
"""
SLOS = """
routes:
  pirate:
    analysis: {alpha: 0.05, on_inconclusive: pause}
    signals:
      - {signal: verifier_pass, scorer: pirate_voice, critical: true, margin: -0.3,
         min_samples: 10}
      - {signal: error_rate, critical: true, margin: 0.3, min_samples: 10,
         ceiling: {value: 0.5, min_samples: 10}}
"""
PLAN = {
    "shadow": {"sample_rate": 1.0, "min_samples": 10},
    "canary": [{"weight": 50, "min_samples": 20}, {"weight": 100, "min_samples": 20}],
}
PIRATE = "Arr matey, a fine day."
Json = dict[str, Any]


@pytest.fixture
async def app(settings: Settings, metrics: Metrics) -> AsyncIterator[FastAPI]:
    settings.quality.score_in_process = False
    settings.analysis.enabled = False  # looks are taken by hand
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        yield application


async def configure(client: httpx.AsyncClient, slos: str = SLOS) -> None:
    yaml = {"content-type": "application/yaml"}
    response = await client.put("/admin/scorers", content=SCORERS, headers=yaml)
    assert response.status_code == 200, response.text
    response = await client.put("/admin/slos", content=slos, headers=yaml)
    assert response.status_code == 200, response.text


async def traffic(client: httpx.AsyncClient, n: int, start: int = 0) -> list[str | None]:
    """`n` chat requests from distinct users; the variant each got."""
    variants = []
    for i in range(start, start + n):
        body = {"model": "pirate", "user": f"u{i}", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post("/v1/chat/completions", json=body)
        variants.append(response.headers.get("x-variant"))
    return variants


async def settle(app: FastAPI) -> None:
    """Write the response log and shadow pairs, and let the scorers finish."""
    for _ in range(50):
        if not app.state.rollouts.shadow.in_flight:
            break
        await asyncio.sleep(0.02)
    await app.state.responses.flush()
    await app.state.rollouts.flush()
    await app.state.scoring.stop()  # drains the queue
    await app.state.scoring.start()


async def rollout(client: httpx.AsyncClient) -> Json:
    response = await client.get("/admin/rollouts/pirate")
    assert response.status_code == 200, response.text
    out: Json = response.json()
    return out


async def test_a_candidate_that_fails_the_route_s_verifier_in_shadow_is_rolled_back_unseen(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.answers = {"pirate--v1": PIRATE, "pirate--v2": "Good day to you."}
    await configure(client)
    started = await client.post(
        "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN}
    )
    assert started.status_code == 201, started.text
    variants = await traffic(client, 30)
    assert set(variants) == {"stable"}  # nobody was served by the candidate
    await settle(app)
    [result] = await app.state.analysis.look_all()
    assert result.verdict.outcome == "fail" and result.action == "rollback" and result.acted
    verifier = next(s for s in result.verdict.signals if s.name == "verifier_pass:pirate_voice")
    assert verifier.paired and verifier.decision == "fail"
    status = await rollout(client)
    assert status["stage"] == "rolled_back"
    event = status["events"][-1]
    assert event["actor"] == "analysis" and event["detail"]["verdict"] == result.verdict_id
    analysis = (await client.get(f"/admin/rollouts/{status['id']}/analysis")).json()
    assert analysis["phase"] == "Failed" and analysis["verdict"]["acted"] is True
    signal = next(s for s in analysis["verdict"]["signals"] if s["name"] == verifier.name)
    assert signal["decision"] == "fail" and signal["candidate_n"] >= 10


async def test_a_good_candidate_goes_from_shadow_through_every_step_to_promoted(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.answers = {"pirate--v1": PIRATE, "pirate--v2": PIRATE}
    await configure(client)
    assert (
        await client.post("/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN})
    ).status_code == 201
    seen = []
    user = 0
    for _ in range(12):
        await traffic(client, 40, start=user)
        user += 40
        await settle(app)
        for result in await app.state.analysis.look_all():
            seen.append((result.verdict.outcome, result.action, result.acted))
        stage = (await rollout(client))["stage"]
        if stage != "shadow" and stage != "canary":
            break
    status = await rollout(client)
    assert status["stage"] == "promoted", (status, seen)
    done = [action for _, action, acted in seen if acted]
    assert done == ["advance", "advance", "promote"], seen
    audit = [e for e in status["events"] if e["actor"] == "analysis"]
    assert [e["action"] for e in audit] == ["rollout:advance", "rollout:advance", "rollout:promote"]
    # The name serves the candidate now.
    body = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}]}
    served = await client.post("/v1/chat/completions", json=body)
    assert served.headers["x-adapter"] == "pirate@2" and "x-variant" not in served.headers


async def test_an_erroring_canary_trips_the_hard_ceiling_at_once(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.answers = {"pirate--v1": PIRATE, "pirate--v2": PIRATE}
    await configure(client)
    assert (
        await client.post("/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN})
    ).status_code == 201
    # An operator skips the shadow stage; then the candidate starts failing.
    forced = await client.post("/admin/rollouts/pirate/advance", json={"force": True})
    assert forced.status_code == 200, forced.text
    fake_state.statuses = {"pirate--v2": 500}
    variants = await traffic(client, 40)
    assert variants.count("canary") >= 10
    await settle(app)
    [result] = await app.state.analysis.look_all()
    errors = next(s for s in result.verdict.signals if s.name == "error_rate")
    assert errors.decision == "fail" and "hard ceiling" in errors.reason
    assert result.action == "rollback" and result.acted
    assert (await rollout(client))["stage"] == "rolled_back"
    # Every user is back on stable at once.
    fake_state.statuses = {}
    assert set(await traffic(client, 20, start=100)) == {None}


async def test_a_dry_run_records_the_verdict_and_does_nothing(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.answers = {"pirate--v1": PIRATE, "pirate--v2": "Good day."}
    await configure(client, SLOS.replace("alpha: 0.05,", "alpha: 0.05, dry_run: true,"))
    assert (
        await client.post("/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN})
    ).status_code == 201
    await traffic(client, 30)
    await settle(app)
    [result] = await app.state.analysis.look_all()
    assert result.verdict.outcome == "fail" and result.action == "rollback" and not result.acted
    assert (await rollout(client))["stage"] == "shadow"
    history = (await client.get("/admin/rollouts/pirate/verdicts")).json()["data"]
    assert history[0]["dry_run"] is True and history[0]["acted"] is False
    assert "dry run" in history[0]["reason"]


async def test_an_operator_s_command_wins_over_a_verdict_taken_before_it(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    fake_state.answers = {"pirate--v1": PIRATE, "pirate--v2": "Good day."}
    await configure(client)
    assert (
        await client.post("/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN})
    ).status_code == 201
    await traffic(client, 30)
    await settle(app)
    runner = app.state.analysis
    [row] = await app.state.rollouts.active_rows()
    slo = app.state.slos.for_route("pirate")
    # The operator pauses between the look's read and its action.
    assert (await client.post("/admin/rollouts/pirate/pause", json={})).status_code == 200
    result = await runner.look_at(row, slo)
    assert result.verdict.outcome == "fail" and not result.acted
    status = await rollout(client)
    assert status["stage"] == "shadow" and status["paused"] is True
    # While paused, later looks take no action at all.
    [row] = await app.state.rollouts.active_rows()
    again = await runner.look_at(row, slo)
    assert again.action == "none"


async def test_the_analysis_loop_acts_by_itself(
    settings: Settings, metrics: Metrics, fake_state: FakeEngineState
) -> None:
    settings.quality.score_in_process = False
    settings.analysis.interval_s = 0.05
    settings.quality.flush_s = 0.05
    settings.rollout.flush_s = 0.05
    fake_state.answers = {"pirate--v1": PIRATE, "pirate--v2": "Good day."}
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            await configure(client)
            plan = {**PLAN, "shadow": {"sample_rate": 1.0, "min_samples": 10}}
            assert (
                await client.post(
                    "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": plan}
                )
            ).status_code == 201
            await traffic(client, 30)
            for _ in range(200):
                if (await rollout(client))["stage"] == "rolled_back":
                    break
                await asyncio.sleep(0.05)
            assert (await rollout(client))["stage"] == "rolled_back"
            assert metrics.registry.get_sample_value("gateway_analysis_leader") == 1
            done = {"route": "pirate", "action": "rollback", "result": "done"}
            assert metrics.registry.get_sample_value("gateway_analysis_actions_total", done) == 1
