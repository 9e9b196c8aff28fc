"""End to end: requests batched together in the real vLLM each get their own adapter or none.

Every LoRA slot holds an adapter, which is the only configuration where vLLM 0.32 CPU's
mixed-batch bug shows: base tokens carry LoRA index -1 and its ops read `weights[-1]`, the
last slot. The same kind of mixed batch runs against the shared engine (the defaults: the
grouped LoRA ops, `gateway.engine.punica_grouped`; three slots, filled by the batch's three
adapters) and against an engine of its own with `LORA_GATEWAY_LORA_FIX=0`; the second must
show the contamination, which proves this test can fail.

Base answers are judged by their style, so their prompts are picked at run time from
held-out candidates: those whose base answer, alone, opens with OPENING_TOKENS tokens each
decided by `greedy.MARGIN_NATS`. An undecided opening flips with the CPU's rounding: on AMX
CPUs "What is the capital of France?" opens with an exact tie and answers "L'Étoile, la
Marseillaise, ...", which reads as French although no adapter touched it. The adapters keep
the demo's held-out prompts (`EVAL_PROMPTS`), on which they hold their style on every CPU
kind; on some other prompts a voice falls apart mid-answer ("OH YES! A MICROSCOPE IS A
TECHNICAL TECHNOSIS THAT T scales and it helps us see ...").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.testing.server import free_port
from gateway.upstream.launcher import EngineProcess, EngineSpec

from .conftest import EngineAssets, SharedEngine, served_name
from .greedy import Greedy, chat_body

pytestmark = pytest.mark.integration

MAX_TOKENS = 48
# Prompts per model in the mixed batch: 8 x (base + 3 adapters) = 32 concurrent requests.
MIXED_PROMPTS = 8
# The opening sets an answer's voice ("A volcano is a" against "L'Étoile, la"): its first
# four tokens must be decided.
OPENING_TOKENS = 4
# The order adapters are first used in decides their slots on a fresh engine (vLLM takes the
# first free slot), so the last name here is the adapter in the last slot.
ADAPTER_ORDER = ("pirate", "french", "shout")
LAST_SLOT_ADAPTER = ADAPTER_ORDER[-1]
BASE = "base"
# More held-out prompts for base requests (checked against the training sets below), so that
# enough candidates open with decided tokens on any CPU: of EVAL_PROMPTS and these, 35 in
# all, 20 do on an AVX-512 EPYC compiled and 21 eager; 8 are needed.
EXTRA_PROMPTS = (
    "Describe a library.",
    "What is a train?",
    "Explain what a bridge is.",
    "Tell me about coffee.",
    "What is a museum?",
    "Describe a lighthouse.",
    "Explain what a glacier is.",
    "What is a telescope?",
    "Tell me about elephants.",
    "Describe a bakery.",
    "What is a piano?",
    "Explain what a map is.",
    "What is a kite?",
    "Describe a castle.",
    "What is a desert island?",
    "Explain what a clock does.",
    "What is a violin?",
    "Describe a waterfall.",
    "What is a bicycle helmet for?",
    "Explain what a compass is.",
    "What is an island?",
    "Describe a market.",
    "What is a microscope?",
)


@dataclass(frozen=True)
class Prompts:
    """The adapters' prompts and the candidates the base prompts are picked from."""

    adapters: tuple[str, ...]
    base_candidates: tuple[str, ...]


@pytest.fixture(scope="session")
def prompts() -> Prompts:
    """Prompts held out of every demo adapter's training set."""
    from adapters.demo import DEMO_ADAPTERS, EVAL_PROMPTS

    candidates = (*EVAL_PROMPTS, *EXTRA_PROMPTS)
    trained = {example.prompt for adapter in DEMO_ADAPTERS for example in adapter.examples()}
    assert not trained & set(candidates), trained & set(candidates)
    return Prompts(EVAL_PROMPTS[:MIXED_PROMPTS], candidates)


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


async def _greedy(client: httpx.AsyncClient, prompt: str) -> Greedy:
    response = await client.post("/v1/chat/completions", json=chat_body(BASE, prompt, MAX_TOKENS))
    response.raise_for_status()
    return Greedy.from_chat(prompt, response.json()["choices"][0])


def _chosen(alone: list[Greedy]) -> list[Greedy]:
    """The MIXED_PROMPTS candidates whose base answers open with the clearest choices."""
    decided = [g for g in alone if g.decided_for(OPENING_TOKENS)]
    assert len(decided) >= MIXED_PROMPTS, (
        f"only {len(decided)} of {len(alone)} candidates open with {OPENING_TOKENS} decided "
        "tokens:\n" + "\n".join(f"{g.prompt!r}: {g.margins()}" for g in alone)
    )
    # sorted() is stable: equal gaps keep the candidates' order.
    return sorted(decided, key=lambda g: -g.opening_gap(OPENING_TOKENS))[:MIXED_PROMPTS]


async def _exercise(
    url: str, prompts: Prompts
) -> tuple[list[Greedy], list[Greedy], list[tuple[str, str, str]]]:
    async with httpx.AsyncClient(base_url=url, timeout=600.0) as client:
        # One request at a time: on a fresh engine each adapter takes the next free slot, in
        # ADAPTER_ORDER.
        for adapter in ADAPTER_ORDER:
            await _complete(client, served_name(adapter), prompts.adapters[0], 1)
        # Base requests without adapter company: the reference for "base" style, and the
        # margins that pick the base prompts.
        alone = list(await asyncio.gather(*(_greedy(client, p) for p in prompts.base_candidates)))
        chosen = _chosen(alone)
        # Everything at once, so that base and every adapter share batches.
        pairs = [
            (model, prompt)
            for base_answer, adapter_prompt in zip(chosen, prompts.adapters, strict=True)
            for model, prompt in (
                (BASE, base_answer.prompt),
                *((served_name(a), adapter_prompt) for a in ADAPTER_ORDER),
            )
        ]
        texts = await asyncio.gather(*(_complete(client, m, p, MAX_TOKENS) for m, p in pairs))
        mixed = [(m, p, t) for (m, p), t in zip(pairs, texts, strict=True)]
    return alone, chosen, mixed


def _run_isolation(
    *,
    label: str,
    url: str,
    prompts: Prompts,
    style_of: Callable[[str], str],
    engine_log: Callable[[], str],
) -> IsolationRun:
    alone, chosen, mixed = asyncio.run(_exercise(url, prompts))
    run = IsolationRun(
        base_only=[Answer(BASE, g.prompt, g.text, style_of(g.text)) for g in chosen],
        mixed=[Answer(m, p, t, style_of(t)) for m, p, t in mixed],
        engine_log=engine_log(),
    )
    print(
        f"\n--- {label}: base answers alone, opening gaps (* = chosen)\n"
        + "\n".join(
            f"{'*' if g in chosen else ' '} {g.opening_gap(OPENING_TOKENS):5.3f} {g.prompt!r}: "
            f"{g.margins(OPENING_TOKENS)}"
            for g in alone
        )
        + f"\n--- {label}: mixed batch of {len(run.mixed)}\n{run.report()}"
    )
    return run


@pytest.fixture(scope="module")
def run_with_fix(
    shared_engine: SharedEngine,
    prompts: Prompts,
    style_of: Callable[[str], str],
) -> IsolationRun:
    """A mixed batch against the shared engine: the defaults, every slot filled by the batch."""
    assert shared_engine.slots == len(ADAPTER_ORDER)
    assert set(ADAPTER_ORDER) <= set(shared_engine.adapters)
    return _run_isolation(
        label="the defaults (LoRA fix on)",
        url=shared_engine.url,
        prompts=prompts,
        style_of=style_of,
        engine_log=shared_engine.log,
    )


@pytest.fixture(scope="module")
def run_without_fix(
    engine_assets: EngineAssets,
    prompts: Prompts,
    style_of: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[IsolationRun]:
    """The same kind of mixed batch against a fresh engine running vLLM's own LoRA ops."""
    log_file = tmp_path_factory.mktemp("engine-nofix") / "vllm.log"
    spec = EngineSpec(
        model_dir=engine_assets.model_dir,
        dtype=engine_assets.dtype,
        served_name=BASE,
        port=free_port(),
        # Every slot filled: with a free last slot the bug stays invisible.
        max_loras=len(ADAPTER_ORDER),
        lora_modules={served_name(a): engine_assets.adapters[a] for a in ADAPTER_ORDER},
        omp_threads_bind="0-1",
        extra_env={"LORA_GATEWAY_LORA_FIX": "0"},
        log_file=log_file,
        start_timeout_s=900.0,
    )
    engine = EngineProcess(spec)
    engine.start()
    try:
        yield _run_isolation(
            label="LORA_GATEWAY_LORA_FIX=0",
            url=engine.url,
            prompts=prompts,
            style_of=style_of,
            engine_log=lambda: log_file.read_text(errors="replace"),
        )
    finally:
        engine.stop()


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
    assert len(run_with_fix.mixed_for(BASE)) == len(run_with_fix.base_only) == MIXED_PROMPTS
    assert len(run_with_fix.mixed) == MIXED_PROMPTS * (1 + len(ADAPTER_ORDER))


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
