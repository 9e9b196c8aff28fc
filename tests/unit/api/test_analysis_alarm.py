"""The reward-hacking alarm through the app: the reward model likes the candidate better
while its verifier fails more often; the alarm is an audit event, a metric, a verdict
field and, when the SLO says so, a pause. Both flat: no alarm."""

from __future__ import annotations

import random

import httpx
import pytest
from fastapi import FastAPI

from gateway.metrics import Metrics
from gateway.registry.quality import NewScore
from tests.unit.api import test_analysis_actions as actions
from tests.unit.api.test_analysis_actions import PLAN, rollout

# The app of the analysis tests: scoring in-process, looks taken by hand.
app = actions.app

SLOS = """
routes:
  pirate:
    analysis: {alarm_alpha: 0.05, on_alarm: %s}
    signals:
      - {signal: reward_mean, margin: '-50%%', min_samples: 20}
      - {signal: verifier_pass, scorer: pirate_voice, margin: -0.5, min_samples: 20}
"""


async def canary(client: httpx.AsyncClient, on_alarm: str) -> int:
    yaml = {"content-type": "application/yaml"}
    put = await client.put("/admin/slos", content=SLOS % on_alarm, headers=yaml)
    assert put.status_code == 200, put.text
    started = await client.post(
        "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN}
    )
    assert started.status_code == 201, started.text
    forced = await client.post("/admin/rollouts/pirate/advance", json={"force": True})
    assert forced.status_code == 200, forced.text
    rollout_id: int = forced.json()["id"]
    return rollout_id


def scores(rollout_id: int, *, hacked: bool, n: int, seed: int) -> list[NewScore]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        for variant, version in (("stable", 1), ("canary", 2)):
            better = hacked and variant == "canary"
            reward = rng.gauss(1.3 if better else 1.0, 0.3)
            passed = rng.random() < (0.6 if better else 0.9)
            common = {
                "route": "pirate",
                "version": version,
                "variant": variant,
                "rollout_id": rollout_id,
            }
            out.append(
                NewScore(f"x{seed}-{i}{variant}r", "reward", value=reward, passed=None, **common)
            )
            out.append(
                NewScore(
                    f"x{seed}-{i}{variant}v",
                    "pirate_voice",
                    value=float(passed),
                    passed=passed,
                    **common,
                )
            )
    return out


@pytest.mark.parametrize("on_alarm", ["alert", "pause"])
async def test_reward_up_while_the_verifier_falls_raises_the_alarm(
    app: FastAPI, client: httpx.AsyncClient, metrics: Metrics, on_alarm: str
) -> None:
    rollout_id = await canary(client, on_alarm)
    runner = app.state.analysis
    await runner.look_all()  # the first look in canary: the stable baseline
    for batch in range(6):
        app.state.quality_store.add_scores(scores(rollout_id, hacked=True, n=40, seed=batch))
        [result] = await runner.look_all()
        if result.verdict.alarm:
            break
    assert result.verdict.alarm is not None
    assert (
        "reward_mean:reward" in result.verdict.alarm
        and "verifier_pass:pirate_voice" in result.verdict.alarm
    )
    status = await rollout(client)
    alarms = [e for e in status["events"] if e["action"] == "rollout:alarm"]
    assert len(alarms) == 1 and alarms[0]["actor"] == "analysis"
    assert (
        metrics.registry.get_sample_value("gateway_analysis_alarms_total", {"route": "pirate"}) == 1
    )
    assert metrics.registry.get_sample_value("gateway_analysis_alarm", {"route": "pirate"}) == 1
    assert status["paused"] is (on_alarm == "pause")
    # Raised once per rollout, however many looks follow.
    await runner.look_all()
    status = await rollout(client)
    assert len([e for e in status["events"] if e["action"] == "rollout:alarm"]) == 1


async def test_flat_reward_and_verifier_raise_no_alarm(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    rollout_id = await canary(client, "pause")
    runner = app.state.analysis
    await runner.look_all()
    for batch in range(6):
        app.state.quality_store.add_scores(scores(rollout_id, hacked=False, n=40, seed=100 + batch))
        [result] = await runner.look_all()
        assert result.verdict.alarm is None
    status = await rollout(client)
    assert not [e for e in status["events"] if e["action"] == "rollout:alarm"]
    assert status["paused"] is False
