"""`model: "auto"` through the whole app: the admin API of the route table, the decision
headers, fallbacks, metrics, and a table shared by two gateway replicas.

The engine is the fake vLLM (it echoes which model it was asked for); the classifier is the
real all-MiniLM-L6-v2 embedder.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.api.auth import hash_key
from gateway.config import RoutingSettings, Settings, TenantKey
from gateway.metrics import Metrics
from gateway.routing.embedder import OnnxEmbedder
from gateway.testing.adapters import TINY_BASE
from gateway.testing.fake_vllm import FakeEngineState
from gateway.testing.server import app_client

TABLE = """\
# Routes of the unit tests (pirate and french are seeded by the API conftest).
threshold: 0.35
routes:
  - name: sea
    adapter: pirate
    keywords: [ahoy]
    utterances:
      - Tell me about sailing ships on the open ocean
      - How do sailors navigate at sea?
      - What is life like aboard a pirate ship?
      - Explain how tides and waves affect a boat
  - name: france
    adapter: french@1
    patterns: ['\\bin french\\b']
    utterances:
      - Tell me about Paris and the Eiffel Tower
      - What is a classic French dish?
      - How do I conjugate French verbs?
default:
  utterances:
    - How do I sort a list in Python?
    - What is the derivative of x squared?
    - How do I fix a leaking faucet?
"""
SEA = "What should I know before sailing a boat across the ocean?"
OFF_TOPIC = "Write a SQL query that counts rows grouped by customer"
ADMIN_KEY = "admin-secret"
TENANT_KEY = "tenant-secret"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


async def put_table(client: httpx.AsyncClient, source: str, **params: str) -> httpx.Response:
    return await client.put(
        "/admin/routes", content=source, params=params, headers={"content-type": "text/yaml"}
    )


def gateway(settings: Settings, metrics: Metrics) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """A gateway of its own (started and stopped here) and a client of it."""
    return app_client(settings, metrics, TINY_BASE)


@pytest.fixture
async def routed(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The app's client with the test table in use."""
    response = await put_table(client, TABLE)
    assert response.status_code == 200, response.text
    return client


def last_engine_model(fake_state: FakeEngineState) -> str:
    return str(fake_state.received[-1]["model"])


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_without_a_table_auto_is_not_a_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat(SEA))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "route table" in error["message"]
    models = (await client.get("/v1/models")).json()["data"]
    assert "auto" not in [m["id"] for m in models]
    assert (await client.get("/admin/routes")).status_code == 404


async def test_auto_routes_by_topic_and_says_why(
    routed: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    sea = await routed.post("/v1/chat/completions", json=chat(SEA))
    assert sea.status_code == 200, sea.text
    # The route's adapter is `pirate`: its stable version, pirate@1 (the first registered).
    assert last_engine_model(fake_state) == "pirate--v1"
    assert sea.headers["x-route"] == "sea" and sea.headers["x-adapter"] == "pirate@1"
    # The answer names the route's adapter, not `auto` and not the engine's `pirate--v1`.
    assert sea.json()["model"] == "pirate"
    assert sea.headers["x-route-method"] == "embedding"
    assert sea.headers["x-route-reason"] == "nearest"
    assert 0.35 <= float(sea.headers["x-route-confidence"]) <= 1.0

    off = await routed.post("/v1/chat/completions", json=chat(OFF_TOPIC))
    assert off.status_code == 200
    assert last_engine_model(fake_state) == "smollm2"
    assert off.headers["x-route"] == "default" and off.headers["x-adapter"] == "base"
    assert off.json()["model"] == "smollm2"
    assert off.headers["x-route-method"] == "fallback"
    assert off.headers["x-route-reason"] in {"nearest_default", "low_confidence"}

    rule = await routed.post(
        "/v1/completions", json={"model": "auto", "prompt": "Say it IN FRENCH"}
    )
    assert rule.status_code == 200
    assert last_engine_model(fake_state) == "french--v1"
    assert rule.headers["x-route"] == "france" and rule.headers["x-route-method"] == "rule"
    assert (
        rule.headers["x-route-reason"] == "pattern"
        and rule.headers["x-route-confidence"] == "1.0000"
    )

    assert sample(metrics, "gateway_route_decisions_total", route="sea", method="embedding") == 1
    assert sample(metrics, "gateway_route_decisions_total", route="france", method="rule") == 1
    assert sample(metrics, "gateway_route_decisions_total", route="default", method="fallback") == 1
    fallbacks = sum(
        sample(metrics, "gateway_route_fallbacks_total", reason=r)
        for r in ("nearest_default", "low_confidence")
    )
    assert fallbacks == 1
    assert sample(metrics, "gateway_route_classify_seconds_count", method="embedding") == 1
    assert sample(metrics, "gateway_route_classify_seconds_count", method="rule") == 1
    # Request metrics carry the adapter that served, not `auto`.
    assert (
        sample(
            metrics,
            "gateway_requests_total",
            endpoint="/v1/chat/completions",
            adapter="pirate",
            version="1",
            status_class="2xx",
        )
        == 1
    )


async def test_streamed_auto_requests_carry_the_route(
    routed: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    async with routed.stream("POST", "/v1/chat/completions", json=chat(SEA, stream=True)) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-route"] == "sea"
        body = b"".join([chunk async for chunk in reply.aiter_bytes()])
    assert b"[DONE]" in body
    assert b'"model": "pirate"' in body and b"pirate--v1" not in body
    assert last_engine_model(fake_state) == "pirate--v1"


async def test_requests_without_text_go_to_the_default(
    routed: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    only_system = {"model": "auto", "messages": [{"role": "system", "content": "Be brief."}]}
    response = await routed.post("/v1/chat/completions", json=only_system)
    assert response.status_code == 200
    assert response.headers["x-route-reason"] == "no_text"
    assert last_engine_model(fake_state) == "smollm2"
    tokens = await routed.post("/v1/completions", json={"model": "auto", "prompt": [1, 2, 3]})
    assert tokens.headers["x-route-reason"] == "no_text"
    assert sample(metrics, "gateway_route_fallbacks_total", reason="no_text") == 2


async def test_models_list_auto_while_a_table_is_in_use(routed: httpx.AsyncClient) -> None:
    ids = [m["id"] for m in (await routed.get("/v1/models")).json()["data"]]
    assert ids[:2] == ["smollm2", "auto"]


async def test_get_routes_shows_the_table_in_use(routed: httpx.AsyncClient) -> None:
    body = (await routed.get("/admin/routes")).json()
    assert body["source"] == TABLE and body["stored"] is True
    assert body["created_by"] == "anonymous"
    routes = {r["name"]: r for r in body["summary"]["routes"]}
    assert routes["sea"]["adapter"] == "pirate" and routes["sea"]["utterances"] == 4
    assert routes["france"]["threshold"] == 0.35 and routes["france"]["patterns"] == 1
    assert body["summary"]["default_utterances"] == 3


BAD_TABLES = {
    "unknown adapter": (TABLE.replace("adapter: pirate", "adapter: klingon"), "klingon"),
    "duplicate names": (TABLE.replace("name: france", "name: sea"), "used 2 times"),
    "empty utterances": (
        "routes:\n  - name: sea\n    adapter: pirate\n    utterances: []\n",
        "at least 1 item",
    ),
    "invalid regex": (TABLE.replace("\\bin french\\b", "(unclosed"), "not a valid regex"),
    "invalid YAML": ("routes: [\n  - name: sea\n", "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "mapping"),
    "base model as adapter": (
        TABLE.replace("adapter: pirate", "adapter: smollm2"),
        "not an adapter",
    ),
    "unknown field": (TABLE.replace("threshold: 0.35", "threshold: 0.35\nfloor: 1"), "floor"),
    "negative that does not compile": (
        TABLE.replace("keywords: [ahoy]", "keywords: [ahoy]\n    negatives: ['ahoy(']"),
        "negative 'ahoy(' is not a valid regex",
    ),
    "empty description": (
        TABLE.replace("adapter: pirate", "adapter: pirate\n    description: '  '"),
        "description: Value error, must not be empty",
    ),
    "context without a head": (
        TABLE.replace("threshold: 0.35", "threshold: 0.35\ncontext: {turns: 2}"),
        "context: reading earlier turns needs method head",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
async def test_a_bad_table_is_refused_and_the_old_one_keeps_serving(
    routed: httpx.AsyncClient, fake_state: FakeEngineState, case: str
) -> None:
    source, expected = BAD_TABLES[case]
    before = (await routed.get("/admin/routes")).json()
    response = await put_table(routed, source)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_route_table" and expected in error["message"]
    after = (await routed.get("/admin/routes")).json()
    assert after["id"] == before["id"] and after["source"] == TABLE
    served = await routed.post("/v1/chat/completions", json=chat(SEA))
    assert served.headers["x-route"] == "sea"
    assert last_engine_model(fake_state) == "pirate--v1"
    audit = (await routed.get("/admin/audit")).json()["data"]
    refusals = [e for e in audit if e["action"] == "routes:refused"]
    assert len(refusals) == 1 and expected in refusals[0]["reason"]


async def test_every_problem_of_a_table_is_listed_at_once(routed: httpx.AsyncClient) -> None:
    source = TABLE.replace("name: france", "name: sea").replace("\\bin french\\b", "(unclosed")
    error = (await put_table(routed, source)).json()["error"]
    for problem in ("used 2 times", "not a valid regex"):
        assert problem in error["message"]
    shape = TABLE.replace("      - How do I conjugate French verbs?", "      - '   '").replace(
        "threshold: 0.35", "threshold: 7"
    )
    message = (await put_table(routed, shape)).json()["error"]["message"]
    assert "empty strings" in message and "threshold" in message
    head = HEAD_TABLE.replace("rule_floor: 0.2", "rule_floor: -0.5").replace(
        "negatives: ['\\bpirate radio\\b']", "negatives: ['pirate radio(', '[']"
    )
    message = (await put_table(routed, head)).json()["error"]["message"]
    assert "rule_floor: -0.5 is not a probability" in message
    assert "negative 'pirate radio(' is not a valid regex" in message
    assert "negative '[' is not a valid regex" in message


# A `head` table: probabilities, a rule floor, negatives and context. (No packaged
# background: the default's utterances are enough here, and the table builds fast.)
HEAD_TABLE = """\
method: head
threshold: 0.5
rule_floor: 0.2
head: {c: 4.0, background: none}
context: {turns: 3}
routes:
  - name: sea
    adapter: pirate
    description: Sailing, ships and the sea as sailors meet it.
    keywords: [pirate, ahoy]
    negatives: ['\\bpirate radio\\b']
    utterances:
      - Tell me about sailing ships on the open ocean
      - How do sailors navigate at sea?
      - What is life like aboard a pirate ship?
      - Explain how tides and waves affect a boat
      - How do I tie a bowline knot on a sailboat?
      - What is the history of the great age of sail?
  - name: france
    adapter: french@1
    utterances:
      - Tell me about Paris and the Eiffel Tower
      - What is a classic French dish?
      - How do I conjugate French verbs?
      - What wine comes from Bordeaux?
      - Who was Napoleon Bonaparte?
default:
  utterances:
    - How do I sort a list in Python?
    - What is the derivative of x squared?
    - How do I fix a leaking faucet?
    - Write a SQL query that counts orders per customer
    - How do I set up a radio station playlist?
    - What is a good budget for a family of four?
    - Explain how vaccines work
    - Recommend a thriller novel
"""


@pytest.fixture
async def headed(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The app's client with the head table in use."""
    response = await put_table(client, HEAD_TABLE)
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["method"] == "head"
    return client


async def test_a_head_table_scores_with_probabilities(
    headed: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    body = (await headed.post("/admin/classify", json={"text": SEA})).json()
    assert body["route"] == "sea" and body["reason"] == "nearest"
    # Probabilities over the routes, the default and the follow-up class.
    assert set(body["scores"]) == {"sea", "france", "default", "(follow-up)"}
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert next(t["route"] for t in body["top"]) == "sea"
    assert "(follow-up)" not in [t["route"] for t in body["top"]]
    assert body["top"][0]["score"] == body["confidence"] >= 0.5
    assert body["explanation"].startswith("sea scores ")
    served = await headed.post("/v1/chat/completions", json=chat(SEA))
    assert served.headers["x-route"] == "sea" and served.headers["x-route-reason"] == "nearest"
    assert float(served.headers["x-route-confidence"]) == pytest.approx(
        body["confidence"], abs=1e-4
    )


async def test_a_negative_pattern_vetoes_a_keyword(
    headed: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    text = "Which pirate radio stations broadcast from ships in the 1960s?"
    body = (await headed.post("/admin/classify", json={"text": text})).json()
    assert body["rule"]["matched"] == "pirate" and body["rule"]["route"] == "sea"
    assert "negative" in body["rule"]["vetoed"]
    assert body["method"] != "rule"
    served = await headed.post("/v1/chat/completions", json=chat(text))
    assert served.headers["x-route-method"] != "rule"
    assert served.headers["x-route-rule"] == (
        "keyword 'pirate' of sea (vetoed: negative '\\bpirate radio\\b' matched)"
    )


async def test_a_keyword_needs_its_route_to_reach_the_rule_floor(
    headed: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    off = "Ahoy is a greeting; now sort this Python list of integers for me"
    body = (await headed.post("/admin/classify", json={"text": off})).json()
    assert body["scores"]["sea"] < 0.2
    assert body["route"] == "default" and "under the rule floor 0.2" in body["rule"]["vetoed"]
    on = "Ahoy! How do sailors navigate at sea at night?"
    ruled = await headed.post("/v1/chat/completions", json=chat(on))
    assert ruled.headers["x-route"] == "sea" and ruled.headers["x-route-method"] == "rule"
    assert ruled.headers["x-route-reason"] == "keyword"
    assert ruled.headers["x-route-rule"] == "keyword 'ahoy' of sea"
    # The confidence of a checked rule is its route's probability, not a flat 1.
    assert 0.2 <= float(ruled.headers["x-route-confidence"]) < 1.0


async def test_a_follow_up_keeps_its_conversation_route(
    headed: httpx.AsyncClient, fake_state: FakeEngineState
) -> None:
    follow_up = "and how long would that take?"
    alone = (await headed.post("/admin/classify", json={"text": follow_up})).json()
    assert alone["route"] == "default"
    messages = [
        {"role": "user", "content": "How do sailors cross the Atlantic on a small sailboat?"},
        {"role": "assistant", "content": "They follow the trade winds from the Canaries."},
        {"role": "user", "content": follow_up},
    ]
    body = (await headed.post("/admin/classify", json={"messages": messages})).json()
    assert body["route"] == "sea" and body["reason"] == "context"
    assert body["earlier"] == [messages[0]["content"]]
    assert body["context_scores"]["sea"] == body["confidence"] >= 0.5
    assert body["explanation"].startswith("a follow-up: the conversation scores sea")
    served = await headed.post("/v1/chat/completions", json={"model": "auto", "messages": messages})
    assert served.headers["x-route"] == "sea" and served.headers["x-route-reason"] == "context"
    assert last_engine_model(fake_state) == "pirate--v1"
    # A clear change of topic is not held to the conversation's route.
    switched = [*messages[:2], {"role": "user", "content": OFF_TOPIC}]
    body = (await headed.post("/admin/classify", json={"messages": switched})).json()
    assert body["route"] == "default" and body["reason"] != "context"


@pytest.mark.parametrize("body", [b"", b"   \n", b"\xff\xfe"])
async def test_an_empty_or_undecodable_body_is_a_400(
    routed: httpx.AsyncClient, body: bytes
) -> None:
    response = await routed.put("/admin/routes", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "routes"


async def test_dry_run_checks_without_storing(routed: httpx.AsyncClient) -> None:
    before = (await routed.get("/admin/routes")).json()["id"]
    changed = TABLE.replace("threshold: 0.35", "threshold: 0.5")
    checked = await put_table(routed, changed, dry_run="true")
    assert checked.status_code == 200 and checked.json()["stored"] is False
    assert (await routed.get("/admin/routes")).json()["id"] == before
    refused = await put_table(
        routed, TABLE.replace("adapter: pirate", "adapter: nope"), dry_run="1"
    )
    assert refused.status_code == 400
    audit = [e["action"] for e in (await routed.get("/admin/audit")).json()["data"]]
    assert "routes:refused" not in audit


async def test_a_replacement_is_audited_and_takes_effect(
    routed: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    first = (await routed.get("/admin/routes")).json()["id"]
    # The sea route now serves french@1.
    replaced = await put_table(
        routed, TABLE.replace("adapter: pirate", "adapter: french"), reason="relabel"
    )
    assert replaced.status_code == 200 and replaced.json()["id"] == first + 1
    await routed.post("/v1/chat/completions", json=chat(SEA))
    assert last_engine_model(fake_state) == "french--v1"
    events = [
        e
        for e in (await routed.get("/admin/audit")).json()["data"]
        if e["action"] == "routes:replace"
    ]
    assert len(events) == 2
    assert events[-1]["reason"] == "relabel" and events[-1]["detail"]["routes"]["sea"] == "french"
    assert sample(metrics, "gateway_route_table_id") == first + 1


async def test_classify_explains_every_route(routed: httpx.AsyncClient) -> None:
    response = await routed.post("/admin/classify", json={"text": SEA})
    assert response.status_code == 200
    body = response.json()
    assert body["route"] == "sea" and body["adapter"] == "pirate"
    assert body["method"] == "embedding" and body["threshold"] == 0.35
    assert set(body["scores"]) == {"sea", "france", "default"}
    assert body["scores"]["sea"] == max(body["scores"].values())
    assert body["confidence"] == body["scores"]["sea"]
    # A rule decides, and every score is still shown.
    rule = (await routed.post("/admin/classify", json={"text": "ahoy there"})).json()
    assert rule["method"] == "rule" and rule["reason"] == "keyword"
    assert set(rule["scores"]) == {"sea", "france", "default"}
    # Chat bodies are routed by their last user message.
    messages = [
        {"role": "user", "content": OFF_TOPIC},
        {"role": "assistant", "content": "SELECT ..."},
        {"role": "user", "content": SEA},
    ]
    assert (await routed.post("/admin/classify", json={"messages": messages})).json()[
        "route"
    ] == "sea"


@pytest.mark.parametrize(
    "body",
    [{}, {"text": "a", "prompt": "b"}, {"text": 3}, {"words": "x"}, {"messages": "hello"}],
)
async def test_classify_refuses_malformed_bodies(
    routed: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await routed.post("/admin/classify", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_retired_adapter_falls_back_to_the_base_model(
    routed: httpx.AsyncClient, fake_state: FakeEngineState, metrics: Metrics
) -> None:
    for version in (1, 2):
        retired = await routed.post(f"/admin/adapters/pirate/versions/{version}/retire", json={})
        assert retired.status_code == 200, retired.text
    response = await routed.post("/v1/chat/completions", json=chat(SEA))
    assert response.status_code == 200
    assert response.headers["x-route"] == "default"
    assert response.headers["x-route-reason"] == "unavailable"
    assert last_engine_model(fake_state) == "smollm2"
    assert sample(metrics, "gateway_route_fallbacks_total", reason="unavailable") == 1


async def test_a_tenant_is_not_routed_to_an_adapter_it_may_not_use(
    settings: Settings, metrics: Metrics, fake_state: FakeEngineState
) -> None:
    keyed = settings.model_copy(
        update={
            "tenant_keys": [
                TenantKey(name="team-a", key_sha256=hash_key(TENANT_KEY), adapters=["french"])
            ],
            "admin_key_sha256": hash_key(ADMIN_KEY),
        }
    )
    async with gateway(keyed, metrics) as client:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        put = await client.put("/admin/routes", content=TABLE, headers=admin)
        assert put.status_code == 200
        tenant = {"authorization": f"Bearer {TENANT_KEY}"}
        sea = await client.post("/v1/chat/completions", json=chat(SEA), headers=tenant)
        assert sea.status_code == 200
        assert sea.headers["x-route-reason"] == "not_allowed"
        assert last_engine_model(fake_state) == "smollm2"
        france = await client.post(
            "/v1/chat/completions", json=chat("Tell me about Paris museums"), headers=tenant
        )
        assert france.headers["x-route"] == "france"
        assert last_engine_model(fake_state) == "french--v1"
        # Tenants cannot change the table.
        assert (await client.put("/admin/routes", content=TABLE, headers=tenant)).status_code == 403


async def test_the_table_is_seeded_once_from_settings(
    settings: Settings, metrics: Metrics, tmp_path: Path
) -> None:
    seed = tmp_path / "routes.yaml"
    seed.write_text(TABLE)
    seeded = settings.model_copy(update={"routing": RoutingSettings(table=str(seed))})
    async with gateway(seeded, metrics) as client:
        first = (await client.get("/admin/routes")).json()
        assert first["created_by"] == "system:seed" and first["source"] == TABLE
        changed = TABLE.replace("threshold: 0.35", "threshold: 0.4")
        assert (await put_table(client, changed)).status_code == 200
    # Restarted with the same seed: the registry's table (the replacement) stays in use.
    async with gateway(seeded, Metrics()) as client:
        again = (await client.get("/admin/routes")).json()
        assert again["source"] == changed and again["id"] == first["id"] + 1


async def test_a_restart_embeds_no_example_again(
    settings: Settings, metrics: Metrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The examples' vectors are kept on disk (`vectorcache`): a second start embeds none.
    embedded: list[str] = []
    original = OnnxEmbedder.embed

    def spy(self: OnnxEmbedder, texts: list[str]) -> Any:
        embedded.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(OnnxEmbedder, "embed", spy)
    added = f"What is a good stretching routine for runners? (run {uuid.uuid4().hex[:8]})"
    seed = tmp_path / "routes.yaml"
    seed.write_text(
        TABLE.replace(
            "    - How do I fix a leaking faucet?\n",
            f"    - How do I fix a leaking faucet?\n    - {added}\n",
        )
    )
    seeded = settings.model_copy(update={"routing": RoutingSettings(table=str(seed))})
    async with gateway(seeded, metrics) as client:
        assert (await client.post("/v1/chat/completions", json=chat(SEA))).status_code == 200
    assert added in embedded
    embedded.clear()
    async with gateway(seeded, Metrics()) as client:
        response = await client.post("/v1/chat/completions", json=chat(SEA))
        assert response.status_code == 200 and response.headers["x-route"] == "sea"
    assert added not in embedded
    assert set(embedded) <= {SEA}  # only the request's own text, if it was not cached


async def test_a_bad_seed_leaves_auto_unavailable(
    settings: Settings, metrics: Metrics, tmp_path: Path
) -> None:
    seed = tmp_path / "routes.yaml"
    seed.write_text(TABLE.replace("adapter: pirate", "adapter: klingon"))
    seeded = settings.model_copy(update={"routing": RoutingSettings(table=str(seed))})
    async with gateway(seeded, metrics) as client:
        assert (await client.get("/admin/routes")).status_code == 404
        response = await client.post("/v1/chat/completions", json=chat(SEA))
        assert response.status_code == 404


async def test_another_replica_picks_up_a_new_table(
    settings: Settings, metrics: Metrics, fake_state: FakeEngineState
) -> None:
    polling = settings.model_copy(update={"registry_poll_s": 0.05})
    async with gateway(polling, metrics) as first, gateway(polling, Metrics()) as second:
        assert (await second.post("/v1/chat/completions", json=chat(SEA))).status_code == 404
        assert (await put_table(first, TABLE)).status_code == 200
        for _ in range(100):
            if (await second.get("/admin/routes")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        response = await second.post("/v1/chat/completions", json=chat(SEA))
        assert response.status_code == 200 and response.headers["x-route"] == "sea"
        assert last_engine_model(fake_state) == "pirate--v1"


async def test_concurrent_auto_requests_are_embedded_in_batches(
    routed: httpx.AsyncClient, metrics: Metrics
) -> None:
    texts = [f"{SEA} Question number {i}." for i in range(24)]
    replies = await asyncio.gather(
        *(routed.post("/v1/chat/completions", json=chat(text)) for text in texts)
    )
    assert all(r.status_code == 200 and r.headers["x-route"] == "sea" for r in replies)
    calls = sample(metrics, "gateway_route_embed_batch_size_count")
    embedded = sample(metrics, "gateway_route_embed_batch_size_sum")
    assert embedded >= 24
    assert calls < embedded, "concurrent requests were embedded one at a time"
    assert json.loads(replies[0].text)["model"]


async def test_a_replacement_embeds_only_its_new_utterances(
    routed: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = app.state.router._batcher.embedder
    calls: list[list[str]] = []
    original = embedder.embed

    def spy(texts: list[str]) -> Any:
        calls.append(list(texts))
        return original(texts)

    monkeypatch.setattr(embedder, "embed", spy)
    # New to this run: the vector cache on disk has not seen it either.
    added = f"What is a good stretching routine for runners? (run {uuid.uuid4().hex[:8]})"
    changed = TABLE.replace(
        "    - How do I fix a leaking faucet?\n",
        f"    - How do I fix a leaking faucet?\n    - {added}\n",
    )
    assert changed != TABLE
    assert (await put_table(routed, changed)).status_code == 200
    assert calls == [[added]]
    # The vectors reused are the ones the table was built with: same decisions, same scores.
    explained = (await routed.post("/admin/classify", json={"text": SEA})).json()
    assert explained["route"] == "sea" and explained["table"] == 2
