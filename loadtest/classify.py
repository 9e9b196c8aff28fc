"""Classification latency and throughput of `model: "auto"` (no engine, no HTTP).

Pins the process to one core, loads the embedder with one thread and the demo route table,
and classifies the prompts of the demo test set (`test.jsonl`: 1 to 80 words, chats
among them):
1. batch 1, one request at a time: the whole decision (rules, embedding, the head's
   scores, the conversation for follow-ups: `classifier.classify`, as the gateway runs it),
   directly and through the gateway's batcher (a thread hop per request, as the gateway does
   it); also the requests no rule decided alone, and those by token count (the cost grows
   with the text). Earlier turns of a chat are embedded once and then remembered, as the
   gateway remembers recent texts;
2. under concurrency: `c` callers at once through the batcher; throughput, latency and
   the mean batch size;
3. `--compare-packaged`: the same batch-1 run on the other models: the rewrite of the
   packaged export (the gateway's fallback when the fused export was not built) and the
   packaged export as shipped (float arithmetic on int8 constants).
Prints tables; `--json FILE` writes the numbers.

    .venv/bin/python -m loadtest.classify --json classify.json
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gateway.config import DEFAULT_CACHE_DIR
from gateway.metrics import Metrics
from gateway.routing.batcher import EmbeddingBatcher
from gateway.routing.calibrate import Sample, load_samples
from gateway.routing.classifier import RouteIndex, VectorsOf, classify
from gateway.routing.conversation import Conversation
from gateway.routing.embedder import (
    Embedder,
    OnnxEmbedder,
    Vectors,
    load_embedder,
    packaged_files,
    prepare_model,
)
from gateway.routing.table import demo_test_path, parse_table, read_table_source
from loadtest.common import machine, machine_line, percentiles, write_json

app = typer.Typer(add_completion=False, help=__doc__)
console = Console()
# Token counts by bucket, each [low, high); the last holds the window's limit, 64 (it was
# [32, 64) once, so texts of exactly 64 tokens were counted nowhere).
TOKEN_BUCKETS = ((0, 12), (12, 20), (20, 32), (32, 65))


def _ms(values: list[float]) -> dict[str, float]:
    return {k: v * 1000 for k, v in percentiles(values, (50, 90, 99)).items()}


async def _index(embedder: Embedder) -> RouteIndex:
    async def embed_many(texts: list[str]) -> Vectors:
        return embedder.embed(texts)

    return await RouteIndex.build(parse_table(read_table_source("demo")), embed_many)


def _direct(embedder: Embedder, earlier: set[str]) -> VectorsOf:
    """Embeds on the caller's thread; the earlier turns of chats come from memory."""
    remembered = {t: embedder.embed([t])[0] for t in sorted(earlier)}

    async def vectors_of(texts: list[str]) -> list[Vectors]:
        return [remembered[t] if t in remembered else embedder.embed([t])[0] for t in texts]

    return vectors_of


def batch_one(
    index: RouteIndex, embedder: OnnxEmbedder, samples: list[Sample], rounds: int
) -> dict[str, Any]:
    """One request at a time, directly: every decision's latency, and by token count."""
    return asyncio.run(_batch_one(index, embedder, samples, rounds))


async def _batch_one(
    index: RouteIndex, embedder: OnnxEmbedder, samples: list[Sample], rounds: int
) -> dict[str, Any]:
    vectors_of = _direct(embedder, {t for s in samples for t in s.earlier})
    for sample in samples[:20]:
        await classify(index, _conversation(sample), vectors_of)
    latencies: list[float] = []
    embedded: list[float] = []
    by_tokens: dict[str, list[float]] = {f"{lo}-{hi - 1}": [] for lo, hi in TOKEN_BUCKETS}
    for _ in range(rounds):
        for sample in samples:
            text = sample.text
            started = time.perf_counter()
            decision = await classify(index, _conversation(sample), vectors_of)
            elapsed = time.perf_counter() - started
            latencies.append(elapsed)
            if decision.method == "rule":
                continue
            embedded.append(elapsed)
            tokens = embedder.token_count(text)
            for lo, hi in TOKEN_BUCKETS:
                if lo <= tokens < hi:
                    by_tokens[f"{lo}-{hi - 1}"].append(elapsed)
    return {
        "requests": len(latencies),
        "decided_by_rules": len(latencies) - len(embedded),
        "latency_ms": _ms(latencies),
        "embedded_latency_ms": _ms(embedded),
        "by_tokens_ms": {k: {"n": len(v), **_ms(v)} for k, v in by_tokens.items() if v},
    }


def _conversation(sample: Sample) -> Conversation:
    return Conversation(sample.text, sample.earlier)


async def through_batcher(
    index: RouteIndex, embedder: Embedder, samples: list[Sample], concurrency: int, total: int
) -> dict[str, Any]:
    """`concurrency` callers classifying `total` samples through the batcher."""
    metrics = Metrics()
    batcher = EmbeddingBatcher(embedder, metrics, max_batch=16, max_pending=100_000)
    latencies: list[float] = []
    queue = list(range(total))
    remembered = {t: embedder.embed([t])[0] for s in samples for t in s.earlier}

    async def vectors_of(texts: list[str]) -> list[Vectors]:
        return [remembered[t] if t in remembered else await batcher.embed_one(t) for t in texts]

    async def caller() -> None:
        while queue:
            sample = samples[queue.pop() % len(samples)]
            started = time.perf_counter()
            await classify(index, _conversation(sample), vectors_of)
            latencies.append(time.perf_counter() - started)

    await batcher.embed_one(samples[0].text)
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await batcher.close()
    calls = metrics.registry.get_sample_value("gateway_route_embed_batch_size_count") or 0
    embedded = metrics.registry.get_sample_value("gateway_route_embed_batch_size_sum") or 0
    return {
        "concurrency": concurrency,
        "requests": total,
        "per_second": total / elapsed,
        "latency_ms": _ms(latencies),
        "mean_batch": (embedded - 1) / max(calls - 1, 1),
    }


def _pin(core: int | None) -> str:
    if core is None or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    os.sched_setaffinity(0, {core})
    return f"core {core}"


def _time_it(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    result = run()
    result["seconds"] = time.perf_counter() - started
    return result


@app.command()
def main(
    rounds: Annotated[int, typer.Option(min=1, help="Passes over the prompts at batch 1.")] = 3,
    concurrency: Annotated[str, typer.Option(help="Comma-separated caller counts.")] = "1,4,16,64",
    requests: Annotated[int, typer.Option(min=1, help="Requests per concurrency level.")] = 680,
    core: Annotated[int | None, typer.Option(help="The core to pin to (none: -1).")] = 1,
    compare_packaged: Annotated[bool, typer.Option(help="Also time the export as shipped.")] = (
        True
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers here.")] = None,
) -> None:
    """Run the classification benchmark."""
    pinned = _pin(None if core is not None and core < 0 else core)
    embedder = load_embedder(DEFAULT_CACHE_DIR, threads=1)
    index = asyncio.run(_index(embedder))
    table = index.table
    samples = load_samples(demo_test_path(), [r.name for r in table.routes] + [table.default.name])
    tokens = [embedder.token_count(s.text) for s in samples]
    console.print(
        f"{len(samples)} prompts ({sum(1 for s in samples if s.earlier)} chats), "
        f"{min(tokens)}-{max(tokens)} tokens (median {sorted(tokens)[len(tokens) // 2]}); "
        f"one thread, {pinned}; {machine_line()}"
    )
    results: dict[str, Any] = {"prompts": len(samples), "pinned": pinned, **machine()}
    results["batch1"] = _time_it(lambda: batch_one(index, embedder, samples, rounds))
    results["batch1_via_batcher"] = asyncio.run(
        through_batcher(index, embedder, samples, 1, len(samples) * rounds)
    )
    results["model"] = embedder.model_path.name
    if compare_packaged:
        files = packaged_files()
        rewrite = prepare_model(files.onnx, DEFAULT_CACHE_DIR / "classifier", files.sha256)
        rewritten = OnnxEmbedder(rewrite, files.tokenizer, threads=1)
        results["batch1_rewrite"] = _time_it(lambda: batch_one(index, rewritten, samples, 1))
        shipped = OnnxEmbedder(files.onnx, files.tokenizer, threads=1)
        results["batch1_packaged_export"] = _time_it(lambda: batch_one(index, shipped, samples, 1))
    results["concurrency"] = [
        asyncio.run(through_batcher(index, embedder, samples, int(c), requests))
        for c in concurrency.split(",")
    ]
    _print(results)
    if json_out is not None:
        write_json(json_out, results)


def _print(results: dict[str, Any]) -> None:
    single = Table("batch 1", "requests", "p50 ms", "p90 ms", "p99 ms")
    rows = [
        (f"direct ({results['model']})", "batch1"),
        ("via the batcher", "batch1_via_batcher"),
    ]
    if "batch1_packaged_export" in results:
        rows.append(("direct, the rewrite (fallback)", "batch1_rewrite"))
        rows.append(("direct, the export as shipped", "batch1_packaged_export"))
    for label, key in rows:
        r = results[key]
        ms = r["latency_ms"]
        single.add_row(
            label, str(r["requests"]), f"{ms['p50']:.2f}", f"{ms['p90']:.2f}", f"{ms['p99']:.2f}"
        )
    r = results["batch1"]
    ms = r["embedded_latency_ms"]
    single.add_row(
        "direct, embedded only",
        str(r["requests"] - r["decided_by_rules"]),
        f"{ms['p50']:.2f}",
        f"{ms['p90']:.2f}",
        f"{ms['p99']:.2f}",
    )
    console.print(single)
    tokens = Table("tokens (embedded)", "n", "p50 ms", "p99 ms")
    for bucket, r in results["batch1"]["by_tokens_ms"].items():
        tokens.add_row(bucket, str(r["n"]), f"{r['p50']:.2f}", f"{r['p99']:.2f}")
    console.print(tokens)
    load = Table("callers", "requests/s", "p50 ms", "p99 ms", "mean batch")
    for r in results["concurrency"]:
        ms = r["latency_ms"]
        load.add_row(
            str(r["concurrency"]),
            f"{r['per_second']:.0f}",
            f"{ms['p50']:.2f}",
            f"{ms['p99']:.2f}",
            f"{r['mean_batch']:.1f}",
        )
    console.print(load)


if __name__ == "__main__":
    app()
