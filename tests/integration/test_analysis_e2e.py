"""The rollout analysis end to end on the real engine, with no human in the loop.

Two gateway processes share one PostgreSQL registry and the shared vLLM engine (SmolLM2 and
the demo adapters). A route serves the pirate adapter; its verifier checks for a pirate
voice and its SLOs name that verifier and the error rate. A webhook receiver in the test
verifies every message's signature.

1. A good candidate (the pirate adapter trained again on the same data with another seed)
   goes shadow -> both canary steps -> promoted by the analysis alone.
2. A bad candidate (the shouting adapter's weights under the route's name) is rolled back
   in shadow: nobody was served by it.
3. Another bad candidate, pushed past shadow by an operator, is rolled back from its canary
   step: the test counts the requests it served and measures, on both gateway processes,
   the time from the rollback to the candidate's 0% there.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.users import Users
from gateway.testing.adapters import copy_adapter
from gateway.testing.processes import GatewayHandle, Processes, answer_of, postgres_database
from tests.integration.conftest import (
    CACHE_DIR,
    EngineAssets,
    SharedEngine,
    give_back_demo_adapters,
)
from tests.integration.hook_receiver import Receiver

QUESTIONS = [
    "Tell me about snow.", "What is a good breakfast?", "How do bees make honey?",
    "Why is the sky blue?", "What should I pack for a hike?", "How do I boil an egg?",
    "What is the moon made of?", "How do trains work?", "Why do cats purr?",
    "What is a volcano?", "How do I learn to swim?", "What makes bread rise?",
    "Where do rivers start?", "How do birds fly?", "What is thunder?", "Why is the sea salty?",
]  # fmt: skip
ENDED = {"promoted", "rolled_back", "aborted"}
PIRATE_VOICE = r"\b(arr+|ahoy|avast|matey|mateys|ye|yer|aye|hearty|hearties|savvy|yo ho)\b"


@pytest.fixture(scope="module")
def reseeded_pirate(engine_assets: EngineAssets) -> Path:
    """The pirate adapter trained again on the same data with another seed (cached)."""
    from adapters.demo import DEMO_ADAPTERS, is_current
    from adapters.train import fingerprint, train_lora

    demo = next(d for d in DEMO_ADAPTERS if d.name == "pirate")
    config = replace(demo.config, seed=1)
    target = CACHE_DIR / "adapters-extra" / "pirate-seed1" / "v1"
    expected = fingerprint(demo.examples(), config, engine_assets.bf16_dir)
    if not is_current(target, expected):
        train_lora(engine_assets.bf16_dir, demo.examples(), target, config, name="pirate")
    return target


@pytest.fixture
def gateways(
    tmp_path: Path, engine_assets: EngineAssets, shared_engine: SharedEngine
) -> Iterator[tuple[GatewayHandle, GatewayHandle]]:
    env = {
        "GATEWAY_UPSTREAM_URLS": shared_engine.url,
        "GATEWAY_BASE_MODEL_NAME": "base",
        "GATEWAY_ENGINE__MODEL_DIR": str(engine_assets.model_dir),
        "GATEWAY_CACHE_DIR": str(CACHE_DIR),
        "GATEWAY_ANALYSIS__INTERVAL_S": "0.5",
        "GATEWAY_QUALITY__FLUSH_S": "0.3",
        "GATEWAY_ROLLOUT__FLUSH_S": "0.3",
        "GATEWAY_QUALITY__SCORE_IN_PROCESS": "false",
    }
    (tmp_path / "adapters").mkdir()
    try:
        with postgres_database("e2e") as url, Processes(tmp_path, url, env=env) as running:
            a = running.start_gateway("a", timeout_s=120)
            b = running.start_gateway("b", timeout_s=120)
            yield a, b
    finally:
        give_back_demo_adapters(shared_engine, engine_assets)


def _ask(url: str, route: str, user: str, question: str) -> httpx.Response:
    body = {
        "model": route,
        "user": user,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 24,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


class Traffic(Users):
    """Users asking the route through both gateways until stopped, `in_flight` at a time (the
    engine batches them); what served them."""

    def __init__(self, urls: list[str], route: str, prefix: str, in_flight: int = 4) -> None:
        super().__init__(in_flight)
        self.urls, self.route, self.prefix = urls, route, prefix
        self.served: list[tuple[float, str | None, int]] = []

    def ask(self, i: int) -> None:
        url = self.urls[i % len(self.urls)]
        response = _ask(url, self.route, f"{self.prefix}-{i}", QUESTIONS[i % len(QUESTIONS)])
        with self.lock:
            self.served.append(
                (time.time(), response.headers.get("x-variant"), response.status_code)
            )

    def canary_served(self) -> int:
        return sum(1 for _, variant, _ in self.served if variant == "canary")


def _status(url: str, route: str) -> dict[str, Any]:
    return answer_of(httpx.get(f"{url}/admin/rollouts/{route}", timeout=30))


def _wait_stage(
    url: str, route: str, stages: set[str], timeout_s: float, traffic: Traffic
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(url, route)
        if status["stage"] in stages:
            return status
        time.sleep(0.5)
    # What the analysis saw last and what the users got, to tell a slow engine from a stuck
    # analysis.
    analysis = httpx.get(f"{url}/admin/rollouts/{route}/analysis", timeout=30).json()
    answers = Counter((variant, code) for _, variant, code in list(traffic.served))
    raise AssertionError(
        f"{route} did not reach {stages} in {timeout_s:.0f} s: {_status(url, route)}\n"
        f"latest analysis: {analysis}\nanswers by (variant, status): {dict(answers)}"
    )


def _rollout(url: str, route: str, version: int, plan: dict[str, Any]) -> dict[str, Any]:
    body = {"route": route, "version": version, "plan": plan}
    return answer_of(httpx.post(f"{url}/admin/rollouts", json=body, timeout=300))


class ZeroWatch(threading.Thread):
    """Asks one gateway, every few milliseconds, whether the route still has a rollout in
    its live view; notes the wall-clock time it first has none."""

    def __init__(self, url: str, route: str) -> None:
        super().__init__(daemon=True)
        self.url, self.route = url, route
        self.zero_at: float | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stopped.is_set() and self.zero_at is None:
                answer = client.post(
                    f"{self.url}/admin/rollouts/{self.route}/assignments",
                    json={"subjects": ["someone"]},
                )
                if answer.status_code == 404:
                    self.zero_at = time.time()
                time.sleep(0.005)


# A guard against a hang, not a time target: on a cold cache the reseeded pirate is trained
# first (float32 on a CPU without native bf16), then three rollouts run on the real engine.
@pytest.mark.timeout(1800)
def test_the_analysis_promotes_a_good_candidate_and_rolls_back_bad_ones(
    gateways: tuple[GatewayHandle, GatewayHandle],
    engine_assets: EngineAssets,
    reseeded_pirate: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = gateways
    route = f"e2e-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "adapters"
    sources = {
        1: engine_assets.adapters["pirate"],
        2: reseeded_pirate,
        3: engine_assets.adapters["shout"],
        4: engine_assets.adapters["shout"],
    }
    for version, source in sources.items():
        copy_adapter(source, root / route / f"v{version}", tag=f"{route}-{version}")
        body = {"name": route, "path": f"{route}/v{version}"}
        assert (
            answer_of(httpx.post(f"{a.url}/admin/adapters", json=body, timeout=60))["version"]
            == version
        )
    yaml = {"content-type": "application/yaml"}
    scorers = f"""
routes:
  {route}:
    sample_rate: 1.0
    scorers:
      - {{kind: regex, name: pirate_voice, must: ['{PIRATE_VOICE}']}}
"""
    assert (
        httpx.put(f"{a.url}/admin/scorers", content=scorers, headers=yaml, timeout=60).status_code
        == 200
    )
    slos = f"""
routes:
  {route}:
    analysis: {{alpha: 0.05, max_step_duration_s: 900}}
    signals:
      - {{signal: verifier_pass, scorer: pirate_voice, critical: true, margin: -0.5,
         min_samples: 10}}
      - {{signal: error_rate, critical: true, margin: 0.2, min_samples: 10,
         ceiling: {{value: 0.5, min_samples: 10}}}}
"""
    assert (
        httpx.put(f"{a.url}/admin/slos", content=slos, headers=yaml, timeout=60).status_code == 200
    )
    receiver = Receiver()
    hook = answer_of(httpx.post(f"{b.url}/admin/hooks", json={"url": receiver.url}, timeout=30))
    receiver.secret = hook["secret"]

    # 1. The good candidate: shadow -> every canary step -> promoted, by the analysis alone.
    plan = {
        "shadow": {"sample_rate": 1.0, "min_samples": 10},
        "canary": [{"weight": 50, "min_samples": 15}, {"weight": 100, "min_samples": 15}],
    }
    started = time.monotonic()
    _rollout(a.url, route, 2, plan)
    traffic = Traffic([a.url, b.url], route, "good")
    traffic.start()
    try:
        done = _wait_stage(a.url, route, ENDED, timeout_s=600, traffic=traffic)
    finally:
        traffic.stopped.set()
        traffic.join(timeout=180)
    good_s = time.monotonic() - started
    assert done["stage"] == "promoted", done
    automatic = [e for e in done["events"] if e["actor"] == "analysis"]
    assert [e["action"] for e in automatic] == [
        "rollout:advance", "rollout:advance", "rollout:promote",
    ]  # fmt: skip
    good_requests = len(traffic.served)

    # 2. A bad candidate is rolled back in shadow: nobody is served by it.
    _rollout(a.url, route, 3, {"shadow": {"sample_rate": 1.0, "min_samples": 10}})
    traffic = Traffic([a.url, b.url], route, "shadowed")
    traffic.start()
    try:
        done = _wait_stage(b.url, route, ENDED, timeout_s=300, traffic=traffic)
    finally:
        traffic.stopped.set()
        traffic.join(timeout=180)
    assert done["stage"] == "rolled_back", done
    assert traffic.canary_served() == 0
    [rollback] = [e for e in done["events"] if e["action"] == "rollout:rollback"]
    assert rollback["actor"] == "analysis" and rollback["detail"]["to"]["step"] == -1

    # 3. Another bad candidate, pushed past shadow by an operator, is rolled back from its
    # canary step; the time to 0% is measured on both gateway processes.
    _rollout(a.url, route, 4, {"shadow": {"sample_rate": 0.0}, "canary": [{"weight": 50}]})
    forced = httpx.post(
        f"{a.url}/admin/rollouts/{route}/advance", json={"force": True, "reason": "skip shadow"}
    )
    assert forced.status_code == 200, forced.text
    watches = [ZeroWatch(a.url, route), ZeroWatch(b.url, route)]
    for watch in watches:
        watch.start()
    traffic = Traffic([a.url, b.url], route, "canary")
    traffic.start()
    try:
        done = _wait_stage(a.url, route, ENDED, timeout_s=300, traffic=traffic)
        for watch in watches:
            watch.join(timeout=30)
    finally:
        traffic.stopped.set()
        for watch in watches:
            watch.stopped.set()
        traffic.join(timeout=180)
    assert done["stage"] == "rolled_back", done
    [rollback] = [e for e in done["events"] if e["action"] == "rollout:rollback"]
    assert rollback["actor"] == "analysis"
    rolled_back_at = datetime.fromisoformat(rollback["at"]).timestamp()
    to_zero = [watch.zero_at - rolled_back_at for watch in watches if watch.zero_at is not None]
    assert len(to_zero) == 2, "a gateway never dropped the rollout"
    assert max(to_zero) <= 1.0, to_zero
    served_bad = sum(1 for _, variant, _ in traffic.served if variant == "canary")
    # Nobody is served by the candidate any more, through either gateway.
    for i in range(6):
        url = (a.url, b.url)[i % 2]
        answer = _ask(url, route, f"after-{i}", QUESTIONS[i])
        assert answer.status_code == 200 and "x-variant" not in answer.headers
        assert answer.headers["x-adapter"] == f"{route}@2"

    # The receiver verified every message; the rollback's carries the verdict and lineage.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(receiver.events("rollout.rolled_back")) < 2:
        time.sleep(0.2)
    assert receiver.rejected == 0
    kinds = [m["payload"]["type"] for m in receiver.verified]
    for kind in (
        "rollout.started",
        "rollout.step_advanced",
        "rollout.promoted",
        "rollout.rolled_back",
    ):
        assert kind in kinds, kinds
    message = next(
        m for m in receiver.verified
        if m["payload"]["type"] == "rollout.rolled_back"
        and m["payload"]["data"]["versions"]["candidate"]["version"] == 4
    )  # fmt: skip
    data = message["payload"]["data"]
    assert data["verdict"]["outcome"] == "fail"
    assert data["versions"]["candidate"]["sha256"] and "lineage" in data["versions"]["candidate"]
    assert message["headers"]["webhook-signature"].startswith("v1,")
    with capsys.disabled():
        print(
            f"\ngood candidate promoted by the analysis in {good_s:.0f} s "
            f"({good_requests} requests through two gateways)"
            f"\nbad candidate in shadow: rolled back, served 0 requests"
            f"\nbad candidate in canary: served {served_bad} requests before its rollback; "
            f"verdict to 0% on each gateway: "
            + ", ".join(f"{1000 * t:.0f} ms" for t in to_zero)
            + "\nthe signed rollback hook the receiver verified:\n"
            + json.dumps(
                {
                    "headers": {
                        k: message["headers"][k]
                        for k in ("webhook-id", "webhook-timestamp", "webhook-signature")
                    },
                    "type": message["payload"]["type"],
                    "verdict": {
                        k: data["verdict"][k] for k in ("id", "outcome", "reason", "stage")
                    },
                    "candidate": {
                        k: data["versions"]["candidate"][k] for k in ("name", "version", "sha256")
                    },
                },
                indent=2,
            )
        )
