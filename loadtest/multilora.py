"""What serving adapters costs on the CPU: vLLM's LoRA ops against the gateway's grouped ops.

One process session starts these engines one after another, on the same cores, with the
same base model (the embedded int8 SmolLM2 unless `--model-dir` says otherwise):

- `grouped`: LoRA on, the gateway's grouped ops, compiled (the default engine plugin);
- `vllm`: LoRA on, `LORA_GATEWAY_LORA_OPS=vllm`: vLLM's per-token ops (with the isolation
  fix), eager, as vLLM's CPU platform runs every LoRA model;
- `nolora`: LoRA off (no `--enable-lora`), compiled: what the base model alone does;
- `grouped-eager` (with `--eager`): grouped ops without compilation.

Each LoRA engine serves two workloads, alternated for `--rounds` rounds: `base` (every
request to the base model) and `mix` (round robin over as many adapters as LoRA slots, so
every slot is busy). A request asks for exactly `--max-tokens` tokens (`ignore_eos`); a
closed loop keeps `--concurrency` requests in flight. The numbers are output tokens per
second of wall time, the median over rounds, and the ratios the design aims at:
mix/base with grouped ops >= 0.9, and base with LoRA on / LoRA off >= 0.85.

    .venv/bin/python -m loadtest.multilora --rounds 2 --out .state/multilora.json
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.upstream.launcher import EngineProcess, EngineSpec, EngineStartError, engine_plugin_env
from loadtest.common import (
    DEFAULT_ADAPTER_ROOT,
    DEFAULT_MODEL_DIR,
    MISSING_ASSETS,
    BenchError,
    run_guarded,
    write_json,
)

DEMO_ADAPTERS = ("pirate", "french", "shout")
BASE = "base"
PROMPTS = (
    "Tell me about snow.",
    "What is the capital of France?",
    "Why is the sky blue?",
    "Give me a tip for cooking rice.",
    "How do birds fly?",
    "What makes a good friend?",
    "Describe the ocean.",
    "How does a bicycle work?",
)
AIM_MIX_OVER_BASE = 0.9
AIM_LORA_OVER_NOLORA = 0.85

app = typer.Typer(add_completion=False, help=__doc__)
console = Console() if sys.stdout.isatty() else Console(width=140)


@dataclass(frozen=True)
class Load:
    """The closed-loop workload: how many requests, how many in flight, how long each."""

    requests: int
    concurrency: int
    max_tokens: int
    timeout_s: float = 600.0


@dataclass(frozen=True)
class EngineCase:
    """One engine configuration to measure."""

    label: str
    enable_lora: bool
    lora_ops: str = "grouped"
    compile_lora: bool = True
    workloads: tuple[str, ...] = ("base", "mix")


@dataclass
class CaseResult:
    """Tokens per second of each round, per workload, and how long the engine took to start."""

    label: str
    start_s: float
    rounds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, workload: str) -> float:
        values = self.rounds.get(workload)
        return statistics.median(values) if values else float("nan")


def adapter_names(slots: int) -> list[str]:
    """One served name per LoRA slot: the demo adapters, then copies under new names.

    vLLM gives every name its own slot, so a copy fills a slot like a new adapter would.
    """
    return [
        DEMO_ADAPTERS[i % len(DEMO_ADAPTERS)] + ("" if i < len(DEMO_ADAPTERS) else f"-{i}")
        for i in range(slots)
    ]


def models_for(workload: str, slots: int) -> list[str]:
    """The models a workload's requests cycle through."""
    return [BASE] if workload == "base" else adapter_names(slots)


async def _one(client: httpx.AsyncClient, model: str, prompt: str, load: Load) -> int:
    response = await client.post(
        "/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": load.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        },
    )
    if response.status_code != 200:
        raise BenchError(f"{model}: HTTP {response.status_code}: {response.text[:300]}")
    return int(response.json()["usage"]["completion_tokens"])


async def closed_loop(url: str, models: list[str], load: Load) -> float:
    """Run `load` against `url`, request i to `models[i % len]`; output tokens per second."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(load.requests):
        queue.put_nowait(i)
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            # Await first: `tokens += await ...` would read `tokens` before the await.
            done = await _one(client, models[i % len(models)], PROMPTS[i % len(PROMPTS)], load)
            tokens += done

    limits = httpx.Limits(max_connections=load.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=load.timeout_s, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(load.concurrency)))
        elapsed = time.perf_counter() - started
    return tokens / elapsed


@dataclass(frozen=True)
class Plan:
    model_dir: Path
    adapter_root: Path
    slots: int
    load: Load
    rounds: int
    cases: tuple[EngineCase, ...]
    engine_cores: str
    port: int
    log_dir: Path


def _spec(plan: Plan, case: EngineCase) -> EngineSpec:
    adapters = {
        name: plan.adapter_root / DEMO_ADAPTERS[i % len(DEMO_ADAPTERS)] / "v1"
        for i, name in enumerate(adapter_names(plan.slots))
    }
    return EngineSpec(
        model_dir=plan.model_dir,
        served_name=BASE,
        log_file=plan.log_dir / f"engine-{case.label}.log",
        port=plan.port,
        enable_lora=case.enable_lora,
        max_loras=plan.slots,
        lora_modules=adapters,
        max_num_seqs=max(64, plan.load.concurrency),
        omp_threads_bind=plan.engine_cores,
        extra_env=engine_plugin_env(case.lora_ops, compile_lora=case.compile_lora),
        # Compiling takes minutes at a first start (vLLM caches it for the next).
        start_timeout_s=1200.0,
    )


def measure(plan: Plan, case: EngineCase) -> CaseResult:
    """Start the case's engine, warm every workload up, then time the rounds."""
    engine = EngineProcess(_spec(plan, case))
    started = time.monotonic()
    try:
        engine.start()
    except EngineStartError as exc:
        raise BenchError(f"{case.label}: {exc}") from exc
    result = CaseResult(case.label, time.monotonic() - started)
    console.print(f"[bold]{case.label}[/]: healthy after {result.start_s:.0f} s")
    try:
        warm = Load(plan.load.concurrency, plan.load.concurrency, plan.load.max_tokens)
        for workload in case.workloads:
            asyncio.run(closed_loop(engine.url, models_for(workload, plan.slots), warm))
        for round_no in range(plan.rounds):
            for workload in case.workloads:
                models = models_for(workload, plan.slots)
                tok_s = asyncio.run(closed_loop(engine.url, models, plan.load))
                result.rounds.setdefault(workload, []).append(tok_s)
                console.print(f"  round {round_no + 1} {workload}: {tok_s:.1f} tok/s")
    finally:
        engine.stop()
    return result


def ratios(results: dict[str, CaseResult]) -> dict[str, float]:
    """The comparisons the design aims at (NaN where a case did not run)."""
    nan = float("nan")

    def get(label: str, workload: str) -> float:
        return results[label].median(workload) if label in results else nan

    out = {
        "grouped_mix_over_base": get("grouped", "mix") / get("grouped", "base"),
        "vllm_mix_over_base": get("vllm", "mix") / get("vllm", "base"),
        "grouped_base_over_nolora": get("grouped", "base") / get("nolora", "base"),
        "vllm_base_over_nolora": get("vllm", "base") / get("nolora", "base"),
        "mix_grouped_over_vllm": get("grouped", "mix") / get("vllm", "mix"),
        "base_grouped_over_vllm": get("grouped", "base") / get("vllm", "base"),
    }
    if "grouped-eager" in results:
        out["grouped_eager_mix_over_base"] = get("grouped-eager", "mix") / get(
            "grouped-eager", "base"
        )
    return out


def _table(results: dict[str, CaseResult], plan: Plan) -> Table:
    table = Table(title=f"output tok/s, median of {plan.rounds} round(s)")
    table.add_column("engine")
    table.add_column("start s", justify="right")
    for workload in ("base", "mix"):
        table.add_column(workload, justify="right")
        table.add_column(f"{workload} rounds", justify="right")
    for result in results.values():
        cells = [result.label, f"{result.start_s:.0f}"]
        for workload in ("base", "mix"):
            rounds = result.rounds.get(workload, [])
            cells += [
                f"{result.median(workload):.1f}" if rounds else "-",
                " ".join(f"{v:.0f}" for v in rounds) or "-",
            ]
        table.add_row(*cells)
    return table


def run(plan: Plan) -> dict[str, Any]:
    results: dict[str, CaseResult] = {}
    for case in plan.cases:
        results[case.label] = measure(plan, case)
    console.print(_table(results, plan))
    found = ratios(results)
    aims = {
        "grouped_mix_over_base": AIM_MIX_OVER_BASE,
        "grouped_base_over_nolora": AIM_LORA_OVER_NOLORA,
    }
    for name, value in found.items():
        aim = f"  (aim >= {aims[name]})" if name in aims else ""
        console.print(f"{name:28s} {value:6.3f}{aim}")
    return {
        "results": {label: vars(r) for label, r in results.items()},
        "medians": {label: {w: r.median(w) for w in r.rounds} for label, r in results.items()},
        "ratios": found,
    }


@app.command()
def main(
    model_dir: Annotated[Path, typer.Option(help="Base model checkpoint")] = DEFAULT_MODEL_DIR,
    adapter_root: Annotated[Path, typer.Option(help="<root>/<name>/v1 adapters")] = (
        DEFAULT_ADAPTER_ROOT
    ),
    slots: Annotated[int, typer.Option(min=1, help="LoRA slots, all filled by the mix")] = 4,
    requests: Annotated[int, typer.Option(min=1, help="Requests per round")] = 96,
    concurrency: Annotated[int, typer.Option(min=1)] = 32,
    max_tokens: Annotated[int, typer.Option(min=1)] = 32,
    rounds: Annotated[int, typer.Option(min=1)] = 2,
    engine_cores: Annotated[str, typer.Option(help="Cores of the engine's threads")] = "1",
    client_cores: Annotated[str, typer.Option(help="Cores of this load generator")] = "0",
    eager: Annotated[bool, typer.Option(help="Also measure grouped ops uncompiled")] = False,
    port: Annotated[int, typer.Option()] = 8151,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON")] = None,
) -> None:
    """Measure base and adapter-mix throughput with each kind of LoRA ops."""
    os.sched_setaffinity(0, {int(c) for c in client_cores.split(",")})
    cases = [
        EngineCase("grouped", enable_lora=True),
        EngineCase("vllm", enable_lora=True, lora_ops="vllm"),
        EngineCase("nolora", enable_lora=False, workloads=("base",)),
    ]
    if eager:
        cases.append(EngineCase("grouped-eager", enable_lora=True, compile_lora=False))
    missing = [n for n in DEMO_ADAPTERS if not (adapter_root / n / "v1").is_dir()]
    if missing or not model_dir.is_dir():
        console.print(f"[red]missing model or adapters ({missing}); {MISSING_ASSETS}")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="multilora-") as tmp:
        plan = Plan(
            model_dir=model_dir,
            adapter_root=adapter_root,
            slots=slots,
            load=Load(requests, concurrency, max_tokens),
            rounds=rounds,
            cases=tuple(cases),
            engine_cores=engine_cores,
            port=port,
            log_dir=Path(tmp),
        )
        try:
            report, load_before, load_after = run_guarded(lambda: run(plan))
        except BenchError as exc:
            console.print(f"[red]benchmark failed:[/] {exc}")
            raise typer.Exit(1) from exc
    report["setup"] = {
        "model_dir": str(model_dir),
        "slots": slots,
        "requests": requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "engine_cores": engine_cores,
        "client_cores": client_cores,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_count": os.cpu_count(),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, report)
        console.print(f"results written to {out}")


if __name__ == "__main__":
    app()
