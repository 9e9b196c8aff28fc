"""The adapter pipeline's commands end to end, as a user runs them: `python -m adapters ...`
against a gateway process on the shared real engine (SmolLM2 on vLLM), with real peft
training on the embedded base model.

Specs here train a few steps only (the example tasks, trained in full, have their own run):
what is tested is the pipeline's behaviour, not the adapter's quality.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.numpy import load_file

from adapters.train import sweep_strays
from gateway.testing.processes import GatewayHandle, Processes
from tests.integration.conftest import CACHE_DIR, EngineAssets, SharedEngine

REPO = Path(__file__).resolve().parents[2]
GENERAL = [
    {"prompt": "What is the capital of France?", "completion": "Paris"},
    {"prompt": "How many days are in a week?", "completion": "seven"},
]


def _spec(root: Path, **changes: Any) -> Path:
    """A small `shout` task: the demo shout data as prompt/completion rows, a few steps."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (REPO / "adapters/demo/shout.jsonl").open()]
    with (data / "train.jsonl").open("w") as out:
        for row in rows[:40]:
            out.write(json.dumps({"prompt": row["prompt"], "completion": row["response"]}) + "\n")
    with (data / "test.jsonl").open("w") as out:
        for row in rows[40:46]:
            out.write(json.dumps({"prompt": row["prompt"], "completion": row["response"]}) + "\n")
    with (data / "general.jsonl").open("w") as out:
        for row in GENERAL:
            out.write(json.dumps(row) + "\n")
    # On the top layers only: the engine and the registry take such an adapter too.
    lora = changes.get("lora", "{r: 2, alpha: 4, target_modules: [q_proj], top_layers: 8}")
    text = f"""\
name: {changes.get("name", "loud")}
base_model: {{id: {changes.get("base", "HuggingFaceTB/SmolLM2-135M-Instruct")}}}
data:
  train: [data/train.jsonl]
lora: {lora}
training: {{steps: {changes.get("steps", 2)}, batch_size: 2, learning_rate: 0.003,
  max_length: 96, seed: {changes.get("seed", 0)}}}
evaluation:
  held_out: {{path: data/test.jsonl}}
  general: data/general.jsonl
  max_tokens: 24
task:
  metrics: [verifier_pass, chrf]
  verifiers:
    - kind: caps_share
      name: shouted
      min: 0.6
gates:
  min: {{held_out.chrf: 0.0}}
  max_regression: {{verifier_pass: 1.0}}
  max_general_loss: 1.0
rollout:
  plan: {{shadow: {{min_samples: 5}}}}
"""
    file = root / "spec.yaml"
    file.write_text(text)
    return file


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    engine_assets: EngineAssets,
    shared_engine: SharedEngine,
) -> Iterator[GatewayHandle]:
    tmp = tmp_path_factory.mktemp("pipeline")
    (tmp / "adapters").mkdir()
    env = {
        "GATEWAY_UPSTREAM_URLS": shared_engine.url,
        "GATEWAY_BASE_MODEL_NAME": "base",
        "GATEWAY_ENGINE__MODEL_DIR": str(engine_assets.model_dir),
        "GATEWAY_CACHE_DIR": str(CACHE_DIR),
        "GATEWAY_ANALYSIS__ENABLED": "false",
    }
    with Processes(tmp, f"sqlite:///{tmp / 'registry.db'}", env=env) as running:
        yield running.start_gateway("pipeline", timeout_s=120)


def _adapters(
    gateway: GatewayHandle, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LORA_GATEWAY_URL": gateway.url,
        "GATEWAY_ADAPTER_ROOT": gateway.env["GATEWAY_ADAPTER_ROOT"],
        "GATEWAY_CACHE_DIR": str(CACHE_DIR),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "adapters", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _versions(gateway: GatewayHandle, name: str) -> list[dict[str, Any]]:
    found = httpx.get(f"{gateway.url}/admin/adapters/{name}", timeout=30)
    if found.status_code == 404:
        return []
    versions: list[dict[str, Any]] = found.json()["versions"]
    return versions


def test_run_makes_a_first_version_stable_and_a_second_starts_a_rollout(
    gateway: GatewayHandle, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "task")
    first = _adapters(gateway, "run", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "it serves loud now" in first.stdout
    [v1] = _versions(gateway, "loud")
    run_dir = next((tmp_path / "task/runs/loud").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(manifest["base_model_sha256"]) == 64
    assert manifest["datasets"][0]["rows"] == 40
    assert manifest["artifact"]["sha256"] and manifest["spec"]["content"]["name"] == "loud"
    # LoRA on the last 8 of SmolLM2's 30 layers only, and the engine serves it (below).
    weights = load_file(run_dir / "adapter_model.safetensors")
    layers = {int(key.split(".layers.")[1].split(".")[0]) for key in weights}
    assert layers == set(range(22, 30))
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert set(report["variants"]) == {"candidate", "base"}  # no stable version yet
    assert report["sets"]["held_out"]["rows"] == 6
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert [e["event"] for e in lineage["events"]] == ["registered", "evaluated", "made_stable"]
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "loud", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert answer.status_code == 200 and answer.headers["x-adapter"] == f"loud@{v1['version']}"

    again = _adapters(gateway, "run", str(spec))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not retrained" in again.stdout and "nothing to do" in again.stdout
    assert [v["version"] for v in _versions(gateway, "loud")] == [v1["version"]]

    second = _adapters(gateway, "run", str(_spec(tmp_path / "task", seed=1)))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "rollout" in second.stdout and "in shadow" in second.stdout
    rollout = httpx.get(f"{gateway.url}/admin/rollouts/loud", timeout=30).json()
    assert rollout["stage"] == "shadow" and rollout["candidate_version"] == v1["version"] + 1
    assert rollout["plan"]["shadow"]["min_samples"] == 5
    reports = sorted((tmp_path / "task/runs/loud").glob("*/evaluation.json"))
    assert any("stable" in json.loads(p.read_text())["variants"] for p in reports)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base": "meta-llama/Llama-3.2-1B"}, "this gateway serves"),
        ({"lora": "{r: 32, alpha: 32, target_modules: [q_proj]}"}, "rank"),
    ],
)
def test_register_fails_with_the_gateways_message(
    gateway: GatewayHandle, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    spec = _spec(tmp_path, name="refused", steps=1, **change)
    result = _adapters(gateway, "run", str(spec))
    assert result.returncode == 1
    assert "the gateway refused refused" in result.stderr and message in result.stderr
    assert _versions(gateway, "refused") == []


def test_bad_spec_and_dataset_lines_name_file_and_line(
    gateway: GatewayHandle, tmp_path: Path
) -> None:
    spec = _spec(tmp_path)
    with (tmp_path / "data/train.jsonl").open("a") as out:
        out.write('{"prompt": "x"}\n')
    spec.write_text(spec.read_text().replace("max_length: 96", "max_length: 5"))
    bad = _adapters(gateway, "check", str(spec))
    assert bad.returncode == 2
    assert f"{spec}:7: training.max_length" in bad.stderr.replace("\n", "")
    spec.write_text(spec.read_text().replace("max_length: 5", "max_length: 96"))
    bad = _adapters(gateway, "check", str(spec))
    assert bad.returncode == 2
    assert f"{tmp_path / 'data/train.jsonl'}:41:" in bad.stderr.replace("\n", "")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_training_leaves_no_output(
    gateway: GatewayHandle, tmp_path: Path, how: signal.Signals
) -> None:
    spec = _spec(tmp_path, name="stopped", steps=400)
    runs = tmp_path / "runs/stopped"
    env = {**os.environ, "GATEWAY_CACHE_DIR": str(CACHE_DIR)}
    log = tmp_path / "train.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapters", "train", str(spec)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # A suite started in the background of a script inherits SIGINT ignored, and Python
            # keeps an ignored SIGINT ignored: give the child Ctrl-C as a terminal would.
            preexec_fn=_default_sigint,
        )
    deadline = time.monotonic() + 120
    while not list(runs.glob(".*.tmp-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it was interrupted"
        time.sleep(0.2)
    time.sleep(3.0)  # well into the steps
    proc.send_signal(how)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        # Not left training beside the rest of the suite.
        proc.kill()
        proc.wait()
        pytest.fail(f"{how.name} did not stop the training in 60 s; it said:\n{log.read_text()}")
    done = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert done == []  # nothing that looks done
    strays = list(runs.glob(".*.tmp-*"))
    if how != signal.SIGKILL:
        assert strays == []  # cleaned up on the way out
    else:
        # Killed outright: only the hidden temporary directory is left, which a later run
        # sweeps once its process is gone.
        [stray] = strays
        assert not (stray / "manifest.json").exists()
        run_name = stray.name[1:].rsplit(".tmp-", 1)[0]
        assert sweep_strays(runs / run_name) == [stray] and not stray.exists()
