"""End to end: the grouped LoRA ops give exactly the outputs of vLLM's own ops in fp32.

Two real engines serve the same fp32 model (the bf16 checkpoint run with `--dtype float32`)
and the same three demo adapters: one with `LORA_GATEWAY_LORA_OPS=vllm` (vLLM's per-token
ops with the isolation fix, eager, as vLLM runs LoRA on the CPU), one with the defaults
(grouped ops, compiled). Each request runs alone, greedy, so each answer depends only on
the model and its adapter; every answer must match word for word, and every adapter must
still answer in its own style (so the comparison is not between two broken engines).

Where the suite's shared engine is that second engine (it serves the float32 checkpoint, as
on CPUs without int8 dot products), it answers instead of a new one: which slot an adapter
sits in does not change a lone request's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.testing.server import free_port
from gateway.upstream.launcher import EngineProcess, EngineSpec, engine_plugin_env

from .conftest import EngineAssets, SharedEngine

pytestmark = pytest.mark.integration

ADAPTERS = ("pirate", "french", "shout")
BASE = "base"
MAX_TOKENS = 40
PROMPTS_PER_MODEL = 3


@dataclass(frozen=True)
class OpsRun:
    """Greedy answers of one engine, keyed by (model, prompt), and its log."""

    answers: dict[tuple[str, str], str]
    engine_log: str


def _served(adapter: str) -> str:
    return f"{adapter}--v1"


def _run(assets: EngineAssets, ops: str, prompts: tuple[str, ...], log_file: Path) -> OpsRun:
    spec = EngineSpec(
        model_dir=assets.bf16_dir,
        served_name=BASE,
        port=free_port(),
        dtype="float32",
        max_loras=len(ADAPTERS),
        lora_modules={_served(a): assets.adapters[a] for a in ADAPTERS},
        omp_threads_bind="0-1",
        extra_env=engine_plugin_env(ops, compile_lora=True),
        log_file=log_file,
        # A first compile of the fp32 model takes a few minutes.
        start_timeout_s=900.0,
    )
    engine = EngineProcess(spec)
    engine.start()
    try:
        answers = _answers(engine.url, prompts)
    finally:
        engine.stop()
    return OpsRun(answers, log_file.read_text(errors="replace"))


def _answers(url: str, prompts: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """Each model's greedy answer to each prompt, one request at a time."""
    answers: dict[tuple[str, str], str] = {}
    with httpx.Client(base_url=url, timeout=600.0) as client:
        for model in (BASE, *(_served(a) for a in ADAPTERS)):
            for prompt in prompts:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.0,
                }
                response = client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                answers[model, prompt] = response.json()["choices"][0]["message"]["content"]
    return answers


@pytest.fixture(scope="module")
def prompts() -> tuple[str, ...]:
    from adapters.demo import EVAL_PROMPTS

    return tuple(EVAL_PROMPTS[:PROMPTS_PER_MODEL])


@pytest.fixture(scope="module")
def vllm_run(
    engine_assets: EngineAssets, prompts: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> OpsRun:
    log_file = tmp_path_factory.mktemp("ops-vllm") / "engine.log"
    return _run(engine_assets, "vllm", prompts, log_file)


@pytest.fixture(scope="module")
def grouped_run(
    engine_assets: EngineAssets, prompts: tuple[str, ...], request: pytest.FixtureRequest
) -> OpsRun:
    # The shared engine serves `model_dir` with `dtype` and the plugin's defaults (grouped,
    # compiled): the grouped engine of this test when that is the bf16 checkpoint in float32.
    if (engine_assets.model_dir, engine_assets.dtype) == (engine_assets.bf16_dir, "float32"):
        shared: SharedEngine = request.getfixturevalue("shared_engine")
        assert set(ADAPTERS) <= set(shared.adapters)
        return OpsRun(_answers(shared.url, prompts), shared.log())
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    log_file = factory.mktemp("ops-grouped") / "engine.log"
    return _run(engine_assets, "grouped", prompts, log_file)


def test_grouped_engine_runs_grouped_ops_compiled(grouped_run: OpsRun) -> None:
    assert "grouped LoRA ops installed" in grouped_run.engine_log
    assert "LoRA model compiled" in grouped_run.engine_log


def test_vllm_ops_engine_keeps_vllms_wrapper(vllm_run: OpsRun) -> None:
    assert "grouped LoRA ops installed" not in vllm_run.engine_log
    assert "LoRA fix installed" in vllm_run.engine_log


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_adapters_greedy_output_is_identical_under_both_ops(
    adapter: str, vllm_run: OpsRun, grouped_run: OpsRun, prompts: tuple[str, ...]
) -> None:
    model = _served(adapter)
    for prompt in prompts:
        assert grouped_run.answers[model, prompt] == vllm_run.answers[model, prompt], prompt


def test_base_greedy_output_is_identical_under_both_ops(
    vllm_run: OpsRun, grouped_run: OpsRun, prompts: tuple[str, ...]
) -> None:
    for prompt in prompts:
        assert grouped_run.answers[BASE, prompt] == vllm_run.answers[BASE, prompt], prompt


def test_grouped_answers_keep_each_adapters_style(
    grouped_run: OpsRun, prompts: tuple[str, ...], style_of: Callable[[str], str]
) -> None:
    for adapter in ADAPTERS:
        styles = [style_of(grouped_run.answers[_served(adapter), p]) for p in prompts]
        assert styles.count(adapter) >= len(prompts) - 1, (adapter, styles)
