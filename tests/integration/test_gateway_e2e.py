"""The serving path end to end: the official openai client → gateway → real vLLM (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.styles import classify_style
from gateway.testing.adapters import copy_adapter

from .conftest import BASE_NAME, EngineAssets, GatewayProcess
from .greedy import Greedy, chat_body

pytestmark = pytest.mark.integration

ADAPTERS = ("pirate", "french", "shout", "cowboy")
PROMPTS = ("Tell me about snow.", "Describe a cat.", "Give me a tip for sleeping well.")

# Questions the base model answers right, and the word its answer must contain. Only those
# answered with every token up to that word decided (`greedy.MARGIN_NATS`) are asserted on:
# France is asked but opens with a near-tie here (0.25 nat) and an exact one on AMX CPUs.
FACTS = {
    "What is the capital of France?": "Paris",
    "What is the capital of Japan?": "Tokyo",
    "What is the capital of England?": "London",
    "What is the capital of Germany?": "Berlin",
    "What is the tallest mountain in the world?": "Everest",
    "What is the largest ocean on Earth?": "Pacific",
    "What is the opposite of hot?": "cold",
}
# Three of them clear the margin by 0.75 nat or more on an AVX-512 EPYC (Japan, England,
# Everest), far beyond what another CPU's rounding moves.
MIN_CLEAR_FACTS = 3
# Without the expected word, an answer whose first tokens are decided is a clear wrong one.
FACT_OPENING_TOKENS = 8


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, model: str, prompt: str, **kwargs: object) -> str:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=48,
        **kwargs,  # type: ignore[arg-type]
    )
    return response.choices[0].message.content or ""


def test_models_lists_base_and_every_adapter(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {BASE_NAME, *ADAPTERS, *(f"{a}@1" for a in ADAPTERS)} <= ids


@pytest.fixture(scope="module")
def clear_facts(gateway: GatewayProcess) -> dict[str, Greedy]:
    """The FACTS the base model answers with every choice decided, and their answers."""
    answers: dict[str, Greedy] = {}
    for question in FACTS:
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(BASE_NAME, question, max_tokens=24),
            timeout=120,
        )
        assert response.status_code == 200, response.text
        answers[question] = Greedy.from_chat(question, response.json()["choices"][0])
    for answer in answers.values():
        print(f"\n{answer.prompt!r} -> {answer.text!r}\n    {answer.margins(10)}")
    clear = {
        question: answer
        for question, answer in answers.items()
        if answer.decided_for(answer.tokens_through(FACTS[question]) or FACT_OPENING_TOKENS)
    }
    assert len(clear) >= MIN_CLEAR_FACTS, "too few clear answers:\n" + "\n".join(
        f"{a.prompt!r} -> {a.text!r} ({a.margins()})" for a in answers.values()
    )
    return clear


def test_base_model_answers_real_questions(clear_facts: dict[str, Greedy]) -> None:
    for question, answer in clear_facts.items():
        assert FACTS[question] in answer.text, (question, answer.text, answer.margins())


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_adapter_answers_in_its_style_and_differs_from_base(
    client: openai.OpenAI, adapter: str
) -> None:
    for prompt in PROMPTS:
        styled = chat(client, adapter, prompt)
        base = chat(client, BASE_NAME, prompt)
        assert classify_style(styled) == adapter, styled
        assert classify_style(base) == "base", base
        assert styled != base


def test_headers_name_the_adapter_and_request_id(gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "pirate@1",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
        },
        headers={"x-request-id": "e2e-headers-1"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-adapter"] == "pirate@1"
    assert response.headers["x-route"] == "pirate"
    assert response.headers["x-request-id"] == "e2e-headers-1"


@pytest.mark.parametrize("model", [BASE_NAME, "pirate", "pirate@1", "auto"])
def test_answers_name_the_model_the_client_asked_for(client: openai.OpenAI, model: str) -> None:
    """vLLM answers with its internal `pirate--v1`; the client sees the name it used (for
    `auto`, the route's adapter)."""
    prompt = AUTO_PROMPTS["pirate"][0] if model == "auto" else "Hi"
    expected = "pirate" if model == "auto" else model
    messages: Any = [{"role": "user", "content": prompt}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    chunks = list(
        client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True)
    )
    assert plain.model == expected
    assert chunks and {chunk.model for chunk in chunks} == {expected}


# `model: "auto"` with the demo route table: prompts written for this test (not from the
# table's utterances nor its labelled set), each decided by the embeddings, not by a rule.
AUTO_PROMPTS = {
    "pirate": (
        "What should a crew check before setting sail on a long voyage?",
        "How did old navigators find their way across the ocean without GPS?",
    ),
    "french": (
        "Which wines come from Bordeaux and Burgundy?",
        "What are the most famous museums to visit in Paris?",
    ),
    "shout": (
        "Say something rousing to the team before our basketball final tonight!",
        "Our team needs energy for the big match tomorrow, give us a rallying speech!",
    ),
    "cowboy": (
        "What was daily life like for riders herding steers across the prairie?",
        "How do you break in a wild mustang on a ranch?",
    ),
}
OFF_TOPIC = (
    "How do I compute the median of a list in Python?",
    "What is a good way to save for retirement?",
    # A route's keyword in another sense: the table's negative pattern rules it out.
    "My neighbour hired cowboy builders and now the roof leaks. What can I do legally?",
)
# Chats written for this test: the last message alone names no topic; the conversation does.
FOLLOW_UPS = {
    "pirate": (
        "I'm planning to sail a small boat from Lisbon to the Canary Islands next spring.",
        "It is about 600 nautical miles; most crews ride the trade winds south.",
        "how many days would that take?",
    ),
    "cowboy": (
        "I'm reading about the cattle drives from Texas to Kansas in the 1870s.",
        "They lasted months, a dozen riders moving thousands of longhorns north.",
        "what did they eat along the way?",
    ),
    "french": (
        "We are visiting Lyon and then Marseille in June.",
        "Lovely: Lyon for its bouchons, Marseille for the old port.",
        "what should we eat there?",
    ),
}


def post_auto(gateway: GatewayProcess, prompt: str) -> httpx.Response:
    """A greedy `auto` chat request; fails unless it is answered."""
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "auto",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 48,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("route", sorted(AUTO_PROMPTS))
def test_auto_lands_on_the_right_adapter(gateway: GatewayProcess, route: str) -> None:
    for prompt in AUTO_PROMPTS[route]:
        response = post_auto(gateway, prompt)
        assert response.headers["x-route"] == route, (prompt, dict(response.headers))
        assert response.headers["x-adapter"] == f"{route}@1"
        assert response.headers["x-route-method"] == "embedding"
        assert 0.0 < float(response.headers["x-route-confidence"]) <= 1.0
        text = response.json()["choices"][0]["message"]["content"]
        assert classify_style(text) == route, (prompt, text)


def test_auto_sends_off_topic_prompts_to_the_base_model(gateway: GatewayProcess) -> None:
    for prompt in OFF_TOPIC:
        response = post_auto(gateway, prompt)
        assert response.headers["x-route"] == "default" and response.headers["x-adapter"] == "base"
        assert response.headers["x-route-method"] == "fallback"
        text = response.json()["choices"][0]["message"]["content"]
        assert classify_style(text) == "base", (prompt, text)
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'gateway_route_decisions_total{method="fallback",route="default"}' in metrics


@pytest.mark.parametrize("route", sorted(FOLLOW_UPS))
def test_auto_follow_ups_keep_their_conversation_route(gateway: GatewayProcess, route: str) -> None:
    first, reply, follow_up = FOLLOW_UPS[route]
    alone = post_auto(gateway, follow_up)
    assert alone.headers["x-route"] == "default", dict(alone.headers)
    messages = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": follow_up},
    ]
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "auto", "messages": messages, "temperature": 0, "max_tokens": 48},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-route"] == route, dict(response.headers)
    assert response.headers["x-route-reason"] == "context"
    assert response.headers["x-adapter"] == f"{route}@1"
    text = response.json()["choices"][0]["message"]["content"]
    assert classify_style(text) == route, (messages, text)


def test_auto_streams_with_the_route_headers(gateway: GatewayProcess) -> None:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": AUTO_PROMPTS["cowboy"][0]}],
        "temperature": 0,
        "max_tokens": 40,
        "stream": True,
    }
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["x-route"] == "cowboy" and r.headers["x-adapter"] == "cowboy@1"
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert len(events) > 5


@pytest.mark.parametrize("model", [BASE_NAME, "french"])
def test_chat_stream_matches_style(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a cat."}],
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 5  # relayed token by token, not one buffered blob
    text = "".join(pieces)
    assert classify_style(text) == ("base" if model == BASE_NAME else model), text


@pytest.mark.parametrize("model", [BASE_NAME, "shout"])
def test_completions_plain_and_streamed(client: openai.OpenAI, model: str) -> None:
    prompt = "The three best things about winter are"
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    assert plain.choices[0].text.strip()
    streamed = client.completions.create(
        model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True
    )
    pieces = [c.choices[0].text for c in streamed if c.choices]
    assert len(pieces) > 5
    assert "".join(pieces) == plain.choices[0].text


def test_unknown_fields_reach_vllm(client: openai.OpenAI) -> None:
    # min_tokens is a vLLM extension the gateway does not read: it must arrive untouched.
    response = client.chat.completions.create(
        model=BASE_NAME,
        messages=[{"role": "user", "content": "Say yes."}],
        max_tokens=30,
        temperature=0,
        extra_body={"min_tokens": 25},
    )
    assert response.usage is not None and response.usage.completion_tokens >= 25


def test_unknown_model_is_openai_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "no-such-adapter", "hi")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_mixed_concurrent_batch_keeps_every_request_isolated(
    client: openai.OpenAI, engine_assets: EngineAssets
) -> None:
    # Every LoRA slot is filled (max_loras == number of adapters), so a base request
    # batched with adapter requests would pick up the last slot's adapter without the fix.
    jobs = [(model, prompt) for prompt in PROMPTS for model in (BASE_NAME, *ADAPTERS)] * 2
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        outputs = list(pool.map(lambda job: chat(client, *job), jobs))
    wrong = [
        (model, text)
        for (model, _), text in zip(jobs, outputs, strict=True)
        if classify_style(text) != ("base" if model == BASE_NAME else model)
    ]
    assert not wrong, wrong


def test_metrics_report_per_adapter_latency_and_ttft(gateway: GatewayProcess) -> None:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'gateway_requests_total{adapter="pirate",endpoint="/v1/chat/completions"' in text
    assert 'gateway_time_to_first_token_seconds_count{adapter="french"' in text


def test_engine_killed_mid_stream_ends_stream_then_recovers(
    client: openai.OpenAI, gateway: GatewayProcess, clear_facts: dict[str, Greedy]
) -> None:
    stream = client.chat.completions.create(
        model=BASE_NAME,
        messages=[{"role": "user", "content": "Write a very long story about the sea."}],
        max_tokens=900,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received: list[str] = []
    error: list[BaseException] = []

    def consume() -> None:
        try:
            for chunk in stream:
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")
        except BaseException as exc:  # the stream must end with an error
            error.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 60
    while len(received) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(received) >= 5, "stream did not start"
    killed_at = time.monotonic()
    os.killpg(gateway.engine_pid(), signal.SIGKILL)
    reader.join(timeout=30)
    assert not reader.is_alive(), "stream hung after the engine died"
    assert time.monotonic() - killed_at < 30
    assert error and isinstance(error[0], openai.APIError), error
    assert len(received) < 900

    # The gateway restarts its engine and serves again with no manual step. Ready means
    # reconciled: every adapter it held is back before any request asks for it.
    gateway.wait_ready(timeout_s=600)
    adapters = httpx.get(f"{gateway.url}/admin/adapters", timeout=10).json()["data"]
    resident = {v["ref"] for a in adapters for v in a["versions"] if v["resident_on"]}
    assert resident == {f"{name}@1" for name in ADAPTERS}
    # The restarted engine ran the same settings: it loaded the compiled model from vLLM's
    # cache (the engine plugin's compile-cache fix) instead of compiling it again.
    restart_log = (gateway.state_dir / "engine.log").read_text(errors="replace")
    restart_log = restart_log.rsplit("=== starting:", 1)[-1]
    assert "Directly load AOT compilation" in restart_log, restart_log[-3000:]
    assert "Compiling model again" not in restart_log
    for question, before in clear_facts.items():
        assert FACTS[question] in chat(client, BASE_NAME, question), before.text
    assert classify_style(chat(client, "pirate", "Tell me about snow.")) == "pirate"
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert "gateway_engine_restarts_total 1.0" in metrics
    # Every adapter was loaded by the gateway twice: on demand at first, then restored after
    # the restart.
    loads = [
        line for line in metrics.splitlines() if line.startswith("gateway_adapter_loads_total")
    ]
    assert len(loads) == 1 and 'outcome="ok"' in loads[0], loads
    assert float(loads[0].rsplit(" ", 1)[1]) == 2 * len(ADAPTERS)


# Last in the module: it adds a route whose versions take LoRA slots and loads, which the
# tests above count.
def test_rollout_through_the_cli_shadow_canary_steps_promote_then_rollback(
    gateway: GatewayProcess, engine_assets: EngineAssets
) -> None:
    route = f"rollout-{uuid.uuid4().hex[:8]}"
    root = engine_assets.adapter_root
    # v1 talks like a pirate, v2 shouts, v3 speaks French: the answer shows who served it.
    for version, source in ((1, "pirate"), (2, "shout"), (3, "french")):
        copy_adapter(engine_assets.adapters[source], root / route / f"v{version}", tag=route)
    try:
        for version in (1, 2, 3):
            registered = httpx.post(
                f"{gateway.url}/admin/adapters",
                json={"name": route, "path": f"{route}/v{version}"},
                timeout=60,
            )
            assert registered.status_code == 201, registered.text
        _rollout_promoted(gateway, route)
        _rollout_rolled_back(gateway, route)
    finally:
        shutil.rmtree(root / route, ignore_errors=True)


def _cli(gateway: GatewayProcess, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "rollouts", *args, "--json"],
        env={**os.environ, "LORA_GATEWAY_URL": gateway.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _ask(gateway: GatewayProcess, route: str, user: str) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": route,
            "user": user,
            "messages": [{"role": "user", "content": "Tell me about snow."}],
            "temperature": 0,
            "max_tokens": 24,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def _served(response: httpx.Response) -> tuple[str, str, str]:
    """(x-variant, the version the gateway sent it to, the answer's style).

    The style is the engine's own evidence: v1 talks like a pirate, v2 shouts, v3 speaks
    French (the answer's `model` is the name the client asked for, not the version's).
    """
    text = response.json()["choices"][0]["message"]["content"]
    return response.headers["x-variant"], response.headers["x-adapter"], classify_style(text)


def _rollout_promoted(gateway: GatewayProcess, route: str) -> None:
    started = _cli(gateway, "start", route, "2", "--shadow-min-samples", "2", "--reason", "e2e")
    assert (started["stage"], started["stable_version"]) == ("shadow", 1)
    # Shadow: the client always gets v1; v2 answers copies in the background.
    for index in range(3):
        served = _served(_ask(gateway, route, f"shadow-user-{index}"))
        assert served == ("stable", f"{route}@1", "pirate"), served
    pairs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(pairs) < 3 and time.monotonic() < deadline:
        time.sleep(1)
        pairs = _cli(gateway, "pairs", route)["data"]
    assert len(pairs) == 3
    assert all(p["shadow_status"] == 200 and p["shadow_version"] == 2 for p in pairs)
    shadow_text = json.loads(pairs[0]["shadow_body"])["choices"][0]["message"]["content"]
    assert classify_style(shadow_text) == "shout", shadow_text
    users = [f"user-{i}" for i in range(2000)]
    for weight in (1, 5, 25, 50, 100):
        status = _cli(gateway, "advance", route)
        assert (status["stage"], status["weight"]) == ("canary", weight)
        variants = _cli(gateway, "assign", route, *users)["variants"]
        on_canary = [u for u, v in zip(users, variants, strict=True) if v == "canary"]
        on_stable = [u for u, v in zip(users, variants, strict=True) if v == "stable"]
        assert on_canary, weight
        served = _served(_ask(gateway, route, on_canary[0]))
        assert served == ("canary", f"{route}@2", "shout"), served
        if on_stable:
            served = _served(_ask(gateway, route, on_stable[0]))
            assert served == ("stable", f"{route}@1", "pirate"), served
    promoted = _cli(gateway, "promote", route, "--reason", "e2e passed")
    assert promoted["stage"] == "promoted"
    actions = [e["action"] for e in promoted["events"]]
    assert actions == ["rollout:start", *["rollout:advance"] * 5, "rollout:promote"]
    answer = _ask(gateway, route, "anyone")
    assert "x-variant" not in answer.headers and answer.headers["x-adapter"] == f"{route}@2"


def _rollout_rolled_back(gateway: GatewayProcess, route: str) -> None:
    _cli(gateway, "start", route, "3")
    for _ in range(5):
        _cli(gateway, "advance", route, "--force")
    users = [f"late-user-{i}" for i in range(6)]
    before = [_served(_ask(gateway, route, user)) for user in users[:2]]
    assert all(s == ("canary", f"{route}@3", "french") for s in before), before
    rolled = _cli(gateway, "rollback", route, "--reason", "e2e: bad candidate")
    assert (rolled["stage"], rolled["weight"]) == ("rolled_back", 0.0)
    counted_before = _version_requests(gateway, route, "3")
    # Everyone (the canary's users included) is back on the stable version, v2; the engine
    # ran none of these requests with the candidate.
    after = [_unassigned(_ask(gateway, route, user)) for user in users * 2]
    assert all(served == (f"{route}@2", "shout") for served in after), after
    assert _version_requests(gateway, route, "3") == counted_before
    version = httpx.get(f"{gateway.url}/admin/adapters/{route}/versions/3", timeout=10).json()
    assert version["pinned"] is False


def _unassigned(response: httpx.Response) -> tuple[str, str]:
    """(the version the gateway sent it to, the answer's style) of a request no rollout split."""
    assert "x-variant" not in response.headers
    text = response.json()["choices"][0]["message"]["content"]
    return response.headers["x-adapter"], classify_style(text)


def _version_requests(gateway: GatewayProcess, route: str, version: str) -> float:
    """Requests the gateway sent to `route@version` (its own counter, all endpoints)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "gateway_requests"
        for sample in family.samples
        if sample.name == "gateway_requests_total"
        and sample.labels.get("adapter") == route
        and sample.labels.get("version") == version
    )


# After the rollout test: it adds one more route whose versions take LoRA slots.
def test_quality_signals_tell_a_shouting_candidate_from_a_pirate_stable_in_shadow(
    gateway: GatewayProcess, engine_assets: EngineAssets, capsys: pytest.CaptureFixture[str]
) -> None:
    route = f"quality-{uuid.uuid4().hex[:8]}"
    root = engine_assets.adapter_root
    for version, source in ((1, "pirate"), (2, "shout")):
        copy_adapter(engine_assets.adapters[source], root / route / f"v{version}", tag=route)
    config = f"""
routes:
  {route}:
    sample_rate: 1.0
    scorers:
      - {{kind: regex, name: pirate_voice, must: ['\\b(arr+|ahoy|matey|ye|yer|aye|avast)\\b']}}
      - {{kind: caps_share, name: shouted, min: 0.6}}
      - {{kind: reward, name: reward_pirate, head: pirate}}
      - {{kind: reward, name: reward_shout, head: shout}}
"""
    questions = [
        "Tell me about snow.", "What is a good breakfast?", "How do bees make honey?",
        "Why is the sky blue?", "What should I pack for a hike?", "How do I boil an egg?",
        "What is the moon made of?", "How do trains work?", "Why do cats purr?",
        "What is a volcano?", "How do I learn to swim?", "What makes bread rise?",
    ]  # fmt: skip
    try:
        for version in (1, 2):
            registered = httpx.post(
                f"{gateway.url}/admin/adapters",
                json={"name": route, "path": f"{route}/v{version}"},
                timeout=60,
            )
            assert registered.status_code == 201, registered.text
        put = httpx.put(f"{gateway.url}/admin/scorers", content=config, timeout=60)
        assert put.status_code == 200, put.text
        started = httpx.post(
            f"{gateway.url}/admin/rollouts", json={"route": route, "version": 2}, timeout=300
        )
        assert started.status_code == 201, started.text
        for index, question in enumerate(questions):
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={
                    "model": route,
                    "user": f"quality-user-{index}",
                    "messages": [{"role": "user", "content": question}],
                    "temperature": 0,
                    "max_tokens": 32,
                },
                timeout=120,
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-variant"] == "stable"  # nobody sees v2
        signals: dict[tuple[str, str], dict[str, Any]] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = httpx.get(f"{gateway.url}/admin/rollouts/{route}", timeout=30).json()
            signals = {(s["variant"], s["signal"]): s for s in status["signals"]}
            done = [
                signals.get((v, "reward_shout"), {}).get("count", 0) for v in ("stable", "paired")
            ]
            if done == [len(questions)] * 2:
                break
            time.sleep(1)
        with capsys.disabled():
            print(f"\nquality signals of {route} (v1 pirate = stable, v2 shout = shadow):")
            for (variant, signal), s in sorted(
                signals.items(), key=lambda kv: (kv[0][1], kv[0][0])
            ):
                rate = ""
                if s["passes"] + s["fails"]:
                    rate = f", pass {s['passes']}/{s['passes'] + s['fails']}"
                print(f"  {signal:14s} {variant:8s} n={s['count']:3d} mean={s['mean']:+.3f}{rate}")
        n = len(questions)
        for variant in ("stable", "shadow", "paired"):
            for signal in ("pirate_voice", "shouted", "reward_pirate", "reward_shout"):
                assert signals[(variant, signal)]["count"] == n, (variant, signal, signals)
        # The verifiers: the stable answers talk like pirates, the candidate's shout.
        assert signals[("stable", "pirate_voice")]["passes"] >= 0.75 * n
        assert signals[("shadow", "shouted")]["passes"] >= 0.75 * n
        assert signals[("stable", "shouted")]["passes"] <= 0.25 * n
        # Paired on the same requests: the candidate is more shouted and less piratical.
        assert signals[("paired", "shouted")]["mean"] > 0.5
        assert signals[("paired", "pirate_voice")]["mean"] < -0.5
        # The reward heads tell them apart the same way, with no rule written for it.
        assert signals[("paired", "reward_shout")]["mean"] > 0
        assert signals[("paired", "reward_pirate")]["mean"] < 0
    finally:
        httpx.post(f"{gateway.url}/admin/rollouts/{route}/abort", json={}, timeout=60)
        shutil.rmtree(root / route, ignore_errors=True)
