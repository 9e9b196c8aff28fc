"""End to end: requests batched together in the real vLLM each get their own adapter or none.

Every LoRA slot holds an adapter (`--max-loras` = number of adapters), which is the only
configuration where vLLM 0.32 CPU's mixed-batch bug shows: base tokens carry LoRA index
-1 and its ops read `weights[-1]`, the last slot. The same mixed batch runs against an
engine with the defaults (the grouped LoRA ops, `gateway.engine.punica_grouped`) and one
with `LORA_GATEWAY_LORA_FIX=0`; the second must show the contamination, which proves this
test can fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.testing.server import free_port
from gateway.upstream.launcher import EngineProcess, EngineSpec

from .conftest import EngineAssets

pytestmark = pytest.mark.integration

MAX_TOKENS = 48
# Prompts per model in the mixed batch: 8 x (base + 3 adapters) = 32 concurrent requests.
MIXED_PROMPTS = 8
# The order adapters are first used in decides their slots (vLLM takes the first free
# slot), so the last name here is the adapter in the last slot.
ADAPTER_ORDER = ("pirate", "french", "shout")
LAST_SLOT_ADAPTER = ADAPTER_ORDER[-1]
BASE = "base"


def served_name(adapter: str) -> str:
    """The vLLM model name of an adapter's version 1."""
    return f"{adapter}--v1"


# --- engine assets (base model, demo adapters, style classifier) -----------------------------


@pytest.fixture(scope="session")
def eval_prompts() -> tuple[str, ...]:
    """Prompts held out of every demo adapter's training set."""
    from adapters.demo import EVAL_PROMPTS

    return tuple(EVAL_PROMPTS[:MIXED_PROMPTS])


# --- one run: an engine, its slots filled in a known order, one mixed batch ------------------


@dataclass(frozen=True)
class Answer:
    """One completion and the style it was classified as."""

    model: str
    prompt: str
    text: str
    style: str

    @property
    def expected_style(self) -> str:
        """The style the requested model must answer in."""
        return BASE if self.model == BASE else self.model.removesuffix("--v1")


@dataclass(frozen=True)
class IsolationRun:
    """What one engine answered, alone and in the mixed batch, and its log."""

    base_only: list[Answer]
    mixed: list[Answer]
    engine_log: str

    def mixed_for(self, model: str) -> list[Answer]:
        """The mixed batch's answers for one model."""
        return [a for a in self.mixed if a.model == model]

    def report(self) -> str:
        """One line per mixed-batch answer: model, detected style, start of the text."""
        lines = [f"{a.model:>11} {a.style:>6}  {a.text[:70]!r}" for a in self.mixed]
        return "\n".join(lines)


async def _complete(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


async def _exercise(url: str, prompts: tuple[str, ...]) -> tuple[list[tuple[str, str, str]], ...]:
    async with httpx.AsyncClient(base_url=url, timeout=600.0) as client:
        # One request at a time: each adapter takes the next free slot, in ADAPTER_ORDER.
        for adapter in ADAPTER_ORDER:
            await _complete(client, served_name(adapter), prompts[0], 1)
        # Base requests without adapter company: the reference for "base" style.
        base_texts = await asyncio.gather(
            *(_complete(client, BASE, p, MAX_TOKENS) for p in prompts)
        )
        base_only = [(BASE, p, t) for p, t in zip(prompts, base_texts, strict=True)]
        # Everything at once, so that base and every adapter share batches.
        models = [BASE, *(served_name(a) for a in ADAPTER_ORDER)]
        pairs = [(m, p) for p in prompts for m in models]
        texts = await asyncio.gather(*(_complete(client, m, p, MAX_TOKENS) for m, p in pairs))
        mixed = [(m, p, t) for (m, p), t in zip(pairs, texts, strict=True)]
    return base_only, mixed


def _run_isolation(
    *,
    fix: str,
    assets: EngineAssets,
    prompts: tuple[str, ...],
    style_of: Callable[[str], str],
    log_file: Path,
) -> IsolationRun:
    spec = EngineSpec(
        model_dir=assets.model_dir,
        served_name=BASE,
        port=free_port(),
        # Every slot filled: with a free last slot the bug stays invisible.
        max_loras=len(ADAPTER_ORDER),
        lora_modules={served_name(a): assets.adapters[a] for a in ADAPTER_ORDER},
        omp_threads_bind="0-1",
        extra_env={"LORA_GATEWAY_LORA_FIX": fix},
        log_file=log_file,
        # A first start compiles the model: minutes on a small CPU without a warm cache.
        start_timeout_s=900.0,
    )
    engine = EngineProcess(spec)
    engine.start()
    try:
        base_only, mixed = asyncio.run(_exercise(engine.url, prompts))
    finally:
        engine.stop()

    def answers(rows: list[tuple[str, str, str]]) -> list[Answer]:
        return [Answer(m, p, t, style_of(t)) for m, p, t in rows]

    run = IsolationRun(answers(base_only), answers(mixed), log_file.read_text(errors="replace"))
    print(f"\n--- LORA_GATEWAY_LORA_FIX={fix}: mixed batch of {len(run.mixed)}\n{run.report()}")
    return run


@pytest.fixture(scope="module")
def run_with_fix(
    engine_assets: EngineAssets,
    eval_prompts: tuple[str, ...],
    style_of: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[IsolationRun]:
    """A mixed batch against an engine with the LoRA fix on (the default)."""
    yield _run_isolation(
        fix="1",
        assets=engine_assets,
        prompts=eval_prompts,
        style_of=style_of,
        log_file=tmp_path_factory.mktemp("engine-fix") / "vllm.log",
    )


@pytest.fixture(scope="module")
def run_without_fix(
    engine_assets: EngineAssets,
    eval_prompts: tuple[str, ...],
    style_of: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[IsolationRun]:
    """The same mixed batch against an engine running vLLM's own LoRA ops."""
    yield _run_isolation(
        fix="0",
        assets=engine_assets,
        prompts=eval_prompts,
        style_of=style_of,
        log_file=tmp_path_factory.mktemp("engine-nofix") / "vllm.log",
    )


def _mismatches(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.style != a.expected_style]


# --- with the fix ---------------------------------------------------------------------------


def test_engine_installs_the_lora_fix_by_default(run_with_fix: IsolationRun) -> None:
    assert "LoRA fix installed" in run_with_fix.engine_log
    assert "punica_cpu.{" in run_with_fix.engine_log
    # By default the batches run through the grouped ops, so those are what this proves.
    assert "grouped LoRA ops installed" in run_with_fix.engine_log


def test_mixed_batch_gives_every_request_its_own_adapter_style(
    run_with_fix: IsolationRun,
) -> None:
    wrong = _mismatches(run_with_fix.mixed)
    assert not wrong, "requests answered in another style:\n" + "\n".join(
        f"{a.model} -> {a.style}: {a.text!r}" for a in wrong
    )
    assert len(run_with_fix.mixed_for(BASE)) == len(run_with_fix.base_only)


def test_base_answers_in_a_mixed_batch_keep_base_style(run_with_fix: IsolationRun) -> None:
    assert {a.style for a in run_with_fix.base_only} == {BASE}
    assert {a.style for a in run_with_fix.mixed_for(BASE)} == {BASE}


# --- without the fix: the same test catches vLLM's bug --------------------------------------


def test_switch_off_reaches_the_engine(run_without_fix: IsolationRun) -> None:
    assert "NOT isolated" in run_without_fix.engine_log
    assert "LoRA fix installed" not in run_without_fix.engine_log


def test_without_the_fix_base_answers_take_the_last_slots_adapter_style(
    run_without_fix: IsolationRun,
) -> None:
    # Alone, base is base: what changes base answers is the batch they share.
    assert {a.style for a in run_without_fix.base_only} == {BASE}
    leaked = [a for a in run_without_fix.mixed_for(BASE) if a.style == LAST_SLOT_ADAPTER]
    assert leaked, "no base answer took the last slot's style:\n" + run_without_fix.report()


def test_without_the_fix_adapter_requests_still_get_their_own_adapter(
    run_without_fix: IsolationRun,
) -> None:
    # The bug is in the rows of index -1 only; adapter rows are computed the same way.
    adapter_answers = [a for a in run_without_fix.mixed if a.model != BASE]
    assert not _mismatches(adapter_answers)
