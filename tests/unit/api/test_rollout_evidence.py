"""`GET /admin/rollouts/{ref}/evidence` through the whole app on the fake engine: the
candidate's canary answers and shadow answers that did badly come back with their texts and
why (a failed verifier, a low reward, a bad rating, an error), nothing else does, and paging
returns every piece once.

One rollout is driven through shadow then canary by hand (`scenario`): the route's verifier
wants pirate speech; the candidate fails it on some shadow copies, errors on one, and passes
it in canary, where single answers get a failed score, a bad rating, rewards or an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.api.auth import hash_key
from gateway.app import create_app
from gateway.config import Settings, TenantKey
from gateway.metrics import Metrics
from gateway.registry.quality import NewScore
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.server import app_client

SCORERS = """
routes:
  pirate:
    sample_rate: 1.0
    scorers:
      - {kind: regex, name: pirate_voice, must: ['\\barr\\b']}
"""
PLAN = {"shadow": {"sample_rate": 1.0}, "canary": [{"weight": 50}, {"weight": 100}]}
PIRATE = "Arr matey, a fine day."
PLAIN = "Good day to you."
CANDIDATE = "pirate--v2"
Json = dict[str, Any]


@pytest.fixture
async def app(settings: Settings, metrics: Metrics) -> AsyncIterator[FastAPI]:
    settings.quality.score_in_process = False
    settings.quality.keep_text = "all"
    settings.analysis.enabled = False  # the rollout moves only when the test says so
    application = create_app(settings, metrics=metrics, base_info=TINY_BASE)
    async with application.router.lifespan_context(application):
        yield application


@dataclass
class Scenario:
    """Request ids of what the scenario made, by what each should be."""

    rollout: int = 0
    # Shadow pairs: candidate failed the verifier; errored; answered well (+ reward 0.1).
    shadow_failed: list[str] = field(default_factory=list)
    shadow_error: str = ""
    shadow_good: str = ""
    # Canary answers.
    failed_score: str = ""
    rated_down: str = ""
    low_reward: str = ""
    high_reward: str = ""
    error: str = ""
    good: list[str] = field(default_factory=list)
    # A stable answer with a failed score and a bad rating.
    stable_bad: str = ""
    prompts: dict[str, str] = field(default_factory=dict)


async def ask(client: httpx.AsyncClient, user: str, text: str) -> httpx.Response:
    body = {"model": "pirate", "user": user, "messages": [{"role": "user", "content": text}]}
    return await client.post("/v1/chat/completions", json=body)


async def settle(app: FastAPI) -> None:
    """Write the response log and shadow pairs, and let the verifier finish."""
    for _ in range(100):
        if not app.state.rollouts.shadow.in_flight:
            break
        await asyncio.sleep(0.02)
    await app.state.responses.flush()
    await app.state.rollouts.flush()
    await app.state.scoring.stop()  # drains the queue
    await app.state.scoring.start()


def score(scenario: Scenario, subject: str, scorer: str, value: float, **kw: Any) -> NewScore:
    return NewScore(
        subject=subject,
        scorer=scorer,
        route="pirate",
        version=kw.pop("version", 2),
        variant=kw.pop("variant", "canary"),
        rollout_id=scenario.rollout,
        value=value,
        passed=kw.pop("passed", None),
        detail=kw.pop("detail", ""),
        tenant=kw.pop("tenant", None),
        request_id=kw.pop("request_id", None),
    )


def served(scenario: Scenario, request_id: str, scorer: str, value: float, **kw: Any) -> NewScore:
    return score(scenario, "", scorer, value, tenant="anonymous", request_id=request_id, **kw)


async def scenario(app: FastAPI, client: httpx.AsyncClient, fake: FakeEngineState) -> Scenario:
    """One rollout of pirate@2 through shadow and a 50% canary (see the module's docstring)."""
    out = Scenario()
    put = await client.put(
        "/admin/scorers", content=SCORERS, headers={"content-type": "application/yaml"}
    )
    assert put.status_code == 200, put.text
    fake.answers = {"pirate--v1": PIRATE, CANDIDATE: PLAIN}
    started = await client.post(
        "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": PLAN}
    )
    assert started.status_code == 201, started.text
    out.rollout = started.json()["id"]

    # Shadow: each copy answered before the engine changes its ways.
    for i, (answer, status) in enumerate([(PLAIN, 200), (PLAIN, 200), (PLAIN, 500), (PIRATE, 200)]):
        fake.answers[CANDIDATE] = answer
        fake.statuses = {CANDIDATE: status}
        text = f"shadow question {i}"
        response = await ask(client, f"s{i}", text)
        assert response.headers["x-variant"] == "stable", response.text
        request_id = response.headers["x-request-id"]
        out.prompts[request_id] = text
        if status != 200:
            out.shadow_error = request_id
        elif answer == PLAIN:
            out.shadow_failed.append(request_id)
        else:
            out.shadow_good = request_id
        await settle(app)
    fake.statuses = {}

    # Canary at 50%: the candidate now passes the verifier.
    assert (await client.post("/admin/rollouts/pirate/advance")).status_code == 200
    canary: list[str] = []
    stable: list[str] = []
    canary_users: list[str] = []
    for i in range(24):
        text = f"canary question {i}"
        response = await ask(client, f"c{i}", text)
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]
        out.prompts[request_id] = text
        if response.headers["x-variant"] == "canary":
            canary.append(request_id)
            canary_users.append(f"c{i}")
        else:
            stable.append(request_id)
    assert len(canary) >= 6 and stable, (canary, stable)
    fake.statuses = {CANDIDATE: 500}
    failed = await ask(client, canary_users[0], "canary question that errs")
    fake.statuses = {}
    assert failed.status_code >= 400
    out.error = failed.headers["x-request-id"]
    await settle(app)

    out.failed_score, out.rated_down, out.low_reward, out.high_reward, *out.good = canary
    out.stable_bad = stable[0]
    store = app.state.quality_store
    pairs = (await client.get("/admin/rollouts/pirate/shadow-pairs")).json()["data"]
    good_pair = next(p["id"] for p in pairs if p["request_id"] == out.shadow_good)
    stored = store.add_scores(
        [
            served(out, out.failed_score, "format", 0.0, passed=False, detail="not a list"),
            served(out, out.low_reward, "helpfulness", 0.2, detail="reward 0.2"),
            served(out, out.high_reward, "helpfulness", 0.9),
            # Passing scores and other variants never count.
            served(out, out.good[0], "format", 1.0, passed=True),
            served(out, out.stable_bad, "format", 0.0, passed=False, variant="stable"),
            score(out, f"p{good_pair}:shadow", "helpfulness", 0.1, variant="shadow"),
            # The stable side of the pair is not the candidate's.
            score(out, f"p{good_pair}:stable", "format", 0.0, passed=False, variant=None),
        ]
    )
    assert stored == 7
    for request_id, rating in [
        (out.rated_down, {"thumbs": "down", "comment": "wrong port", "tags": ["wrong"]}),
        (out.stable_bad, {"thumbs": "down"}),
        (out.good[1], {"thumbs": "up"}),
    ]:
        rated = await client.post("/v1/feedback", json={"response_id": request_id, **rating})
        assert rated.status_code == 200, rated.text
    return out


async def evidence(client: httpx.AsyncClient, ref: str | int = "pirate", **params: Any) -> Json:
    response = await client.get(f"/admin/rollouts/{ref}/evidence", params=params)
    assert response.status_code == 200, response.text
    out: Json = response.json()
    return out


def by_request(page: Json) -> dict[str, Json]:
    return {piece["request_id"]: piece for piece in page["data"]}


def signals(piece: Json) -> list[str]:
    return [reason["signal"] for reason in piece["reasons"]]


def refused(response: httpx.Response, status: int, param: str | None = None) -> Json:
    assert response.status_code == status, response.text
    error: Json = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    return error


async def test_bad_canary_answers_come_back_with_reasons_and_text_and_good_ones_do_not(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    s = await scenario(app, client, fake_state)

    page = await evidence(client, source="canary")

    assert page["object"] == "list" and page["next_after"] is None
    assert page["rollout"] == {
        "id": s.rollout,
        "route": "pirate",
        "stable_version": 1,
        "candidate_version": 2,
        "stage": "canary",
        "active": True,
    }
    found = by_request(page)
    assert set(found) == {s.failed_score, s.rated_down, s.error}
    assert [p["source"] for p in page["data"]] == ["canary"] * 3
    ids = [p["id"] for p in page["data"]]
    assert ids == sorted(ids)
    failed = found[s.failed_score]
    assert failed["reasons"] == [
        {"signal": "verifier:format", "value": 0.0, "detail": "not a list"}
    ]
    assert (failed["version"], failed["status"], failed["messages"]) == (2, 200, None)
    assert failed["prompt"] == f"user: {s.prompts[s.failed_score]}"
    assert failed["answer"] == PIRATE
    rated = found[s.rated_down]
    [reason] = rated["reasons"]
    assert (reason["signal"], reason["value"]) == ("feedback", 0.0)
    assert "wrong port" in reason["detail"] and "wrong" in reason["detail"]
    assert rated["prompt"] == f"user: {s.prompts[s.rated_down]}" and rated["answer"] == PIRATE
    errored = found[s.error]
    assert signals(errored) == ["error"] and errored["status"] >= 400
    assert errored["answer"] is None and errored["prompt"] == "user: canary question that errs"


async def test_failed_shadow_answers_come_back_as_shadow_with_the_candidate_s_text(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    s = await scenario(app, client, fake_state)

    page = await evidence(client, s.rollout, source="shadow")

    found = by_request(page)
    assert set(found) == {*s.shadow_failed, s.shadow_error}
    for request_id in s.shadow_failed:
        piece = found[request_id]
        assert piece["source"] == "shadow" and piece["version"] == 2 and piece["status"] == 200
        [reason] = piece["reasons"]
        assert (reason["signal"], reason["value"]) == ("verifier:pirate_voice", 0.0)
        question = s.prompts[request_id]
        assert piece["messages"] == [{"role": "user", "content": question}]
        assert piece["prompt"] == f"user: {question}"
        assert piece["answer"] == PLAIN  # the candidate's answer, not the stable one
    errored = found[s.shadow_error]
    assert signals(errored) == ["error"] and errored["status"] == 500
    assert errored["answer"] is None and errored["messages"] is not None


async def test_all_sources_give_canary_answers_then_shadow_pairs(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    s = await scenario(app, client, fake_state)

    page = await evidence(client)

    sources = [p["source"] for p in page["data"]]
    assert sources == ["canary"] * 3 + ["shadow"] * 3
    assert s.stable_bad not in by_request(page)
    assert not set(s.good) & set(by_request(page))


async def test_reward_below_adds_answers_whose_reward_is_lower(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    s = await scenario(app, client, fake_state)

    low = by_request(await evidence(client, reward_below=0.5))
    high = by_request(await evidence(client, reward_below=0.95))
    lowest = by_request(await evidence(client, reward_below=0.05))

    assert set(low) == {
        *(s.failed_score, s.rated_down, s.error, s.low_reward),
        *(*s.shadow_failed, s.shadow_error, s.shadow_good),
    }
    assert low[s.low_reward]["reasons"] == [
        {"signal": "reward:helpfulness", "value": 0.2, "detail": "reward 0.2"}
    ]
    # Only the candidate's side of the pair counts (not the stable side's failed score, nor
    # the verifier's candidate-minus-stable difference).
    assert signals(low[s.shadow_good]) == ["reward:helpfulness"]
    assert low[s.shadow_good]["answer"] == PIRATE
    assert all(signals(low[r]) == ["verifier:pirate_voice"] for r in s.shadow_failed)
    assert s.high_reward not in low
    assert signals(high[s.high_reward]) == ["reward:helpfulness"]
    assert s.low_reward not in lowest and s.shadow_good not in lowest
    assert set(lowest) == {s.failed_score, s.rated_down, s.error, *s.shadow_failed, s.shadow_error}


async def test_paging_with_after_and_limit_returns_every_piece_once(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await scenario(app, client, fake_state)
    everything = await evidence(client, reward_below=0.5)
    assert len(everything["data"]) == 8 and everything["next_after"] is None

    for limit in (1, 3, 4, 7, 8):
        seen: list[tuple[str, int]] = []
        cursors: list[str] = []
        params: Json = {"reward_below": 0.5, "limit": limit}
        while True:
            page = await evidence(client, **params)
            assert 0 < len(page["data"]) <= limit
            seen += [(p["source"], p["id"]) for p in page["data"]]
            if page["next_after"] is None:
                break
            cursors.append(page["next_after"])
            params["after"] = page["next_after"]
        assert seen == [(p["source"], p["id"]) for p in everything["data"]], limit
        assert len(cursors) == -(-8 // limit) - 1
    # A cursor is the source and id of the last piece of its page.
    first = await evidence(client, reward_below=0.5, limit=5)
    last = first["data"][-1]
    assert first["next_after"] == f"{last['source']}:{last['id']}"


async def test_a_canary_cursor_starts_the_shadow_source_at_its_beginning(
    app: FastAPI, client: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    await scenario(app, client, fake_state)
    shadow = await evidence(client, source="shadow")
    canary = await evidence(client, source="canary")
    last_canary = f"canary:{canary['data'][-1]['id']}"

    assert (await evidence(client, source="shadow", after=last_canary)) == shadow
    after_shadow = await evidence(client, source="canary", after=f"shadow:{0}")
    assert after_shadow["data"] == [] and after_shadow["next_after"] is None


async def test_answers_whose_text_was_not_kept_come_back_with_null_text(
    settings: Settings, metrics: Metrics, fake_state: FakeEngineState
) -> None:
    settings.quality.keep_text = "off"
    settings.analysis.enabled = False
    plan = {"shadow": {"sample_rate": 0.0}, "canary": [{"weight": 100}]}
    async with app_client(settings, metrics, TINY_BASE) as client:
        started = await client.post(
            "/admin/rollouts", json={"route": "pirate", "version": 2, "plan": plan}
        )
        assert started.status_code == 201, started.text
        assert (await client.post("/admin/rollouts/pirate/advance")).status_code == 200
        answered = await ask(client, "u1", "a question nobody keeps")
        assert answered.headers["x-variant"] == "canary"
        request_id = answered.headers["x-request-id"]
        rated = await client.post("/v1/feedback", json={"response_id": request_id, "score": 1})
        assert rated.status_code == 200, rated.text
        rolled_back = await client.post("/admin/rollouts/pirate/rollback")
        assert rolled_back.status_code == 200

        page = await evidence(client, started.json()["id"])

    [piece] = page["data"]
    assert piece["request_id"] == request_id and signals(piece) == ["feedback"]
    assert (piece["messages"], piece["prompt"], piece["answer"]) == (None, None, None)
    assert page["rollout"]["stage"] == "rolled_back" and page["rollout"]["active"] is False


async def test_a_rollout_with_no_evidence_gives_an_empty_list(client: httpx.AsyncClient) -> None:
    started = await client.post("/admin/rollouts", json={"route": "pirate", "version": 2})
    assert started.status_code == 201

    page = await evidence(client, started.json()["id"])

    assert page["data"] == [] and page["next_after"] is None
    assert page["rollout"]["id"] == started.json()["id"]


@pytest.mark.parametrize("ref", ["9999", "french", "no-such-route", "²"])
async def test_an_unknown_rollout_is_a_404_in_openai_s_error_shape(
    client: httpx.AsyncClient, ref: str
) -> None:
    response = await client.get(f"/admin/rollouts/{ref}/evidence")

    error = refused(response, 404)
    assert error["code"] == "rollout_not_found"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"source": "stable"}, "source"),
        ({"reward_below": "nan"}, "reward_below"),
        ({"reward_below": "low"}, "reward_below"),
        ({"after": "canary"}, "after"),
        ({"after": "stable:3"}, "after"),
        ({"after": "canary:-1"}, "after"),
        ({"after": "canary:" + "9" * 19}, "after"),
    ],
)
async def test_bad_query_values_are_400s_in_openai_s_error_shape(
    client: httpx.AsyncClient, params: Json, param: str
) -> None:
    assert (await client.post("/admin/rollouts", json={"route": "pirate", "version": 2})).is_success

    response = await client.get("/admin/rollouts/pirate/evidence", params=params)

    error = refused(response, 400)
    assert param in (error["param"] or ""), error


async def test_evidence_needs_the_admin_key(settings: Settings, metrics: Metrics) -> None:
    settings.admin_key_sha256 = hash_key("key-admin")
    settings.tenant_keys = [TenantKey(name="acme", key_sha256=hash_key("key-acme"))]
    async with app_client(settings, metrics, TINY_BASE) as client:
        path = "/admin/rollouts/pirate/evidence"
        anonymous = await client.get(path)
        tenant = await client.get(path, headers={"Authorization": "Bearer key-acme"})
        admin = await client.get(path, headers={"Authorization": "Bearer key-admin"})

    assert anonymous.status_code == 401 and tenant.status_code == 403
    assert anonymous.json()["error"]["message"] and tenant.json()["error"]["message"]
    refused(admin, 404)  # through the gate: pirate has had no rollout
