"""With the real vLLM: new adapter versions are registered and served while load runs on
another adapter, with no failed request; bad registrations are refused by the running
gateway before vLLM sees them. (`kill -9` of vLLM and the restored resident set are checked
in test_gateway_e2e.py, which restarts its engine anyway.)"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.adapters import copy_adapter

from .conftest import (
    EngineAssets,
    GatewayProcess,
    SharedEngine,
    give_back_demo_adapters,
    start_gateway,
)

DEMO = ("pirate", "french", "shout")


@pytest.fixture(scope="module")
def adapter_root(engine_assets: EngineAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private adapter root (tests add versions to it) holding the demo adapters."""
    root = tmp_path_factory.mktemp("hotswap") / "adapters"
    for name in DEMO:
        shutil.copytree(engine_assets.adapters[name], root / name / "v1")
    return root


@pytest.fixture(scope="module")
def swap_gateway(
    engine_assets: EngineAssets,
    shared_engine: SharedEngine,
    adapter_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """A gateway of its own on the shared engine (its three slots; three versions resident,
    so new versions make the gateway evict)."""
    tmp = tmp_path_factory.mktemp("hotswap-gateway")
    process = start_gateway(
        tmp,
        engine_assets,
        GATEWAY_UPSTREAM_URLS=shared_engine.url,
        GATEWAY_BASE_MODEL_NAME="base",
        GATEWAY_ADAPTER_ROOT=str(adapter_root),
        GATEWAY_MAX_RESIDENT_ADAPTERS="3",
    )
    try:
        process.wait_ready(timeout_s=900)
        yield process
    finally:
        process.stop()
        give_back_demo_adapters(shared_engine, engine_assets)


def _chat(url: str, model: str, prompt: str = "Tell me about snow.") -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 40,
        "temperature": 0,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def _versions(url: str) -> dict[str, dict[str, Any]]:
    adapters = httpx.get(f"{url}/admin/adapters", timeout=10).json()["data"]
    return {v["ref"]: v for a in adapters for v in a["versions"]}


class SteadyLoad:
    """Two client threads calling one adapter until stopped; every status kept."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(_chat(self.url, self.model).status_code)
            except httpx.HTTPError:
                self.statuses.append(-1)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)


def test_new_version_is_registered_and_served_under_load_with_no_failure(
    swap_gateway: GatewayProcess, adapter_root: Path, style_of: Callable[[str], str]
) -> None:
    url = swap_gateway.url
    assert style_of(_text(_chat(url, "french"))) == "french"
    copy_adapter(adapter_root / "pirate" / "v1", adapter_root / "pirate" / "v2", tag="2")
    with SteadyLoad(url, "french") as load:
        time.sleep(3)
        started = time.monotonic()
        registered = httpx.post(
            f"{url}/admin/adapters",
            json={"name": "pirate", "path": "pirate/v2", "manifest": {"run": "hotswap"}},
            timeout=60,
        )
        assert registered.status_code == 201, registered.text
        assert registered.json()["ref"] == "pirate@2"
        served = _chat(url, "pirate@2")
        first_served_s = time.monotonic() - started
        # `pirate` still means its stable version: registering moves no traffic.
        stable = _chat(url, "pirate")
        time.sleep(2)
    assert served.headers["x-adapter"] == "pirate@2"
    assert style_of(_text(served)) == "pirate"
    assert stable.headers["x-adapter"] == "pirate@1"
    assert len(load.statuses) >= 4
    assert set(load.statuses) == {200}, load.statuses
    assert first_served_s < 120
    versions = _versions(url)
    assert versions["pirate@2"]["state"] == "ready"
    assert versions["pirate@2"]["resident_on"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "pirate", "path": "pirate/v1", "sha256": "0" * 64}, "sha256"),
        ({"name": "pirate", "path": "../outside"}, "path"),
        (
            {"name": "pirate", "path": "pirate/v1", "base_model": "meta-llama/Llama-3-8B"},
            "base_model",
        ),
        ({"name": "pirate", "path": "pirate/v1", "colour": "red"}, "colour"),
    ],
    ids=["wrong-sha256", "dotdot", "other-base", "unknown-field"],
)
def test_bad_registrations_are_refused_and_change_nothing(
    swap_gateway: GatewayProcess, body: dict[str, Any], param: str
) -> None:
    url = swap_gateway.url
    before = _versions(url)
    response = httpx.post(f"{url}/admin/adapters", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    after = _versions(url)
    assert {k: v["state"] for k, v in after.items()} == {k: v["state"] for k, v in before.items()}


def test_rank_above_the_engine_maximum_is_refused_before_vllm(
    swap_gateway: GatewayProcess, adapter_root: Path
) -> None:
    target = adapter_root / "wide" / "v1"
    copy_adapter(adapter_root / "shout" / "v1", target, tag="wide")
    config = json.loads((target / "adapter_config.json").read_text())
    config["r"] = 64  # above the engine's --max-lora-rank (16)
    (target / "adapter_config.json").write_text(json.dumps(config))
    response = httpx.post(
        f"{swap_gateway.url}/admin/adapters", json={"name": "wide", "path": "wide/v1"}, timeout=30
    )
    assert response.status_code == 400
    assert "rank 64" in response.json()["error"]["message"]
    assert not any(ref.startswith("wide@") for ref in _versions(swap_gateway.url))
