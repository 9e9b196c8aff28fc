"""Throughput through the gateway versus straight to vLLM, measured by `vllm bench serve`.

One real vLLM engine, one gateway in front of it, and vLLM's own load tool, unmodified,
run with the same arguments against both: direct, through, direct again (the direct runs
bracket drift from other work on the machine; the ratio uses their mean).

    .venv/bin/python -m loadtest.throughput --num-prompts 64 --max-concurrency 16
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.upstream.launcher import EngineProcess, EngineSpec, EngineStartError
from loadtest.common import (
    BIN_DIR,
    DEFAULT_MODEL_DIR,
    BenchError,
    child_env,
    ensure_port_free,
    load_average,
    log_tail,
    run_guarded,
    spawn,
    stop,
    wait_ok,
    write_json,
)

# The embedded default's served model name.
SERVED_NAME = "smollm2-135m-instruct"
AIM_RATIO = 0.97
# The numbers compared between runs, as `vllm bench serve` names them in its result file.
THROUGHPUT_KEYS = ("output_throughput", "request_throughput", "total_token_throughput")
LATENCY_KEYS = tuple(
    f"{p}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for p in ("median", "p90", "p99")
)

app = typer.Typer(add_completion=False, help=__doc__)
# Wide enough for the tables when the output goes to a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=140)


@dataclass(frozen=True)
class Workload:
    """The `vllm bench serve` arguments shared by every run."""

    tokenizer: Path
    num_prompts: int
    max_concurrency: int
    input_len: int
    output_len: int
    request_rate: str
    num_warmups: int
    timeout_s: float


@dataclass(frozen=True)
class Case:
    """One model to compare: the name clients use at the gateway and vLLM's own name."""

    label: str
    through_model: str
    direct_model: str


def bench_command(base_url: str, model: str, workload: Workload, result: Path) -> list[str]:
    """The `vllm bench serve` command line for one run."""
    return [
        str(BIN_DIR / "python"),
        "-m",
        "gateway.engine.vllm_entry",
        "bench",
        "serve",
        "--backend",
        "openai-chat",
        "--endpoint",
        "/v1/chat/completions",
        "--base-url",
        base_url,
        "--model",
        model,
        "--tokenizer",
        str(workload.tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(workload.input_len),
        "--random-output-len",
        str(workload.output_len),
        "--num-prompts",
        str(workload.num_prompts),
        "--max-concurrency",
        str(workload.max_concurrency),
        "--request-rate",
        workload.request_rate,
        "--num-warmups",
        str(workload.num_warmups),
        # Same prompts in every run; every answer exactly `output_len` tokens long.
        "--seed",
        "0",
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,90,99",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(result.parent),
        "--result-filename",
        result.name,
    ]


def run_bench(
    name: str,
    base_url: str,
    model: str,
    workload: Workload,
    work_dir: Path,
    cores: set[int] | None = None,
) -> dict[str, Any]:
    """Run `vllm bench serve` once (own process group, bounded) and return its result file."""
    result = work_dir / f"{name}.json"
    log_file = work_dir / f"{name}.log"
    env = child_env(
        {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    )
    load_before = load_average()
    proc = spawn(bench_command(base_url, model, workload, result), log_file, env, cores)
    try:
        code = proc.wait(timeout=workload.timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{name}: no result after {workload.timeout_s:.0f}s") from exc
    finally:
        stop(proc)
    if code != 0 or not result.is_file():
        raise BenchError(f"{name}: vllm bench serve failed ({code}):\n{log_tail(log_file)}")
    raw: dict[str, Any] = json.loads(result.read_text())
    # Per-request lists make the report large and say nothing the percentiles do not.
    data = {k: v for k, v in raw.items() if not isinstance(v, list)}
    data["load_average_before"] = load_before
    data["load_average_after"] = load_average()
    return data


def run_order(rounds: int) -> list[str]:
    """Direct and through runs alternated, starting and ending with direct: D T D (T D)..."""
    order = ["direct-1"]
    for i in range(1, rounds + 1):
        order += [f"through-{i}", f"direct-{i + 1}"]
    return order


def _engine_spec(
    model_dir: Path, port: int, log_file: Path, cores: str, max_seqs: int, timeout_s: float
) -> EngineSpec:
    return EngineSpec(
        model_dir=model_dir,
        served_name=SERVED_NAME,
        log_file=log_file,
        port=port,
        max_num_seqs=max_seqs,
        omp_threads_bind=cores,
        start_timeout_s=timeout_s,
    )


def _gateway_env(
    engine_url: str, model_dir: Path, adapter_root: Path, work_dir: Path
) -> dict[str, str]:
    return child_env(
        {
            "GATEWAY_UPSTREAM_URLS": json.dumps([engine_url]),
            "GATEWAY_BASE_MODEL_NAME": SERVED_NAME,
            # The gateway validates adapters against the served model's shapes.
            "GATEWAY_ENGINE__MODEL_DIR": str(model_dir),
            "GATEWAY_ADAPTER_ROOT": str(adapter_root),
            "GATEWAY_CACHE_DIR": str(work_dir / "cache"),
            "GATEWAY_STATE_DIR": str(work_dir / "state"),
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
    )


def _cases(gateway_url: str, adapter_model: str | None) -> list[Case]:
    """The base model, plus the adapter if asked, with vLLM's name taken from the gateway."""
    cases = [Case("base", SERVED_NAME, SERVED_NAME)]
    if adapter_model is None:
        return cases
    models = httpx.get(f"{gateway_url}/v1/models", timeout=10.0).json()["data"]
    roots = {m["id"]: m["root"] for m in models}
    if adapter_model not in roots:
        raise BenchError(f"the gateway does not serve {adapter_model!r}; it has {sorted(roots)}")
    return [*cases, Case(adapter_model, adapter_model, roots[adapter_model])]


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


def _compare(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Through divided by the mean of the direct runs, plus the latency differences."""
    direct = [r for name, r in runs.items() if name.startswith("direct")]
    through = [r for name, r in runs.items() if name.startswith("through")]
    ratio = {k: _mean(through, k) / _mean(direct, k) for k in THROUGHPUT_KEYS}
    added = {k: _mean(through, k) - _mean(direct, k) for k in LATENCY_KEYS}
    # How far the direct runs scatter: a ratio closer to 1 than this is noise.
    tok_s = [float(r["output_throughput"]) for r in direct]
    spread = (max(tok_s) - min(tok_s)) / _mean(direct, "output_throughput")
    return {
        "ratio": ratio,
        "added_ms": added,
        "direct_spread": spread,
        "aim_met": ratio["output_throughput"] >= AIM_RATIO,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{float(value):.{digits}f}"


def _table(label: str, runs: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> Table:
    table = Table(title=f"{label}: vllm bench serve, direct vs through", title_justify="left")
    columns = ("run", "ok", "failed", "out tok/s", "req/s", "TTFT p50", "TTFT p99")
    for column in (*columns, "TPOT p50", "TPOT p99", "E2E p50", "load"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, r in runs.items():
        table.add_row(
            name,
            str(r.get("completed")),
            str(r.get("failed")),
            _fmt(r.get("output_throughput")),
            _fmt(r.get("request_throughput"), 2),
            _fmt(r.get("median_ttft_ms")),
            _fmt(r.get("p99_ttft_ms")),
            _fmt(r.get("median_tpot_ms")),
            _fmt(r.get("p99_tpot_ms")),
            _fmt(r.get("median_e2el_ms")),
            _fmt(r.get("load_average_after"), 2),
        )
    ratio, added = comparison["ratio"], comparison["added_ms"]
    verdict = "[green]aim met[/green]" if comparison["aim_met"] else "[red]aim missed[/red]"
    table.add_row(
        "through/direct",
        "",
        "",
        _fmt(ratio["output_throughput"], 3),
        _fmt(ratio["request_throughput"], 3),
        f"{_fmt(added['median_ttft_ms'], 2)} ms",
        f"{_fmt(added['p99_ttft_ms'], 2)} ms",
        f"{_fmt(added['median_tpot_ms'], 2)} ms",
        f"{_fmt(added['p99_tpot_ms'], 2)} ms",
        f"{_fmt(added['median_e2el_ms'], 2)} ms",
        verdict,
        style="bold",
    )
    return table


@dataclass(frozen=True)
class Plan:
    """One benchmark run, as asked for on the command line."""

    model_dir: Path
    adapter_root: Path | None
    adapter_model: str | None
    workload: Workload
    rounds: int
    engine_port: int
    gateway_port: int
    engine_cores: str
    client_cores: set[int] | None
    start_timeout_s: float
    keep_logs: Path | None


def run(plan: Plan) -> dict[str, Any]:
    """Start vLLM and the gateway, run every bench, stop both; return the results per case."""
    engine_url = f"http://127.0.0.1:{plan.engine_port}"
    gateway_url = f"http://127.0.0.1:{plan.gateway_port}"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lg-throughput-") as tmp, ExitStack() as stack:
        work_dir = plan.keep_logs or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        for port in (plan.engine_port, plan.gateway_port):
            ensure_port_free(port)
        engine_log = work_dir / "engine.log"
        engine = EngineProcess(
            _engine_spec(
                plan.model_dir,
                plan.engine_port,
                engine_log,
                plan.engine_cores,
                max(64, plan.workload.max_concurrency),
                plan.start_timeout_s,
            )
        )
        stack.callback(engine.stop)
        console.print(f"starting vLLM on {engine_url} ({plan.model_dir.name}) ...")
        started = time.monotonic()
        try:
            engine.start()
        except EngineStartError as exc:
            raise BenchError(f"{exc}\n{log_tail(engine_log)}") from exc
        console.print(f"vLLM healthy after {time.monotonic() - started:.0f}s")
        adapter_root = plan.adapter_root or work_dir / "no-adapters"
        gateway_log = work_dir / "gateway.log"
        gateway = spawn(
            [str(BIN_DIR / "lora-gateway"), "serve", "--port", str(plan.gateway_port)],
            gateway_log,
            _gateway_env(engine_url, plan.model_dir, adapter_root, work_dir),
            plan.client_cores,
        )
        stack.callback(stop, gateway)
        # Ready means the engine answered a health check (adapters load on first use).
        wait_ok(f"{gateway_url}/readyz", gateway, 180.0, gateway_log)
        order = run_order(plan.rounds)
        for case in _cases(gateway_url, plan.adapter_model):
            runs: dict[str, dict[str, Any]] = {}
            for name in order:
                through = name.startswith("through")
                url = gateway_url if through else engine_url
                model = case.through_model if through else case.direct_model
                console.print(f"{case.label} / {name}: vllm bench serve --model {model} at {url}")
                runs[name] = run_bench(
                    f"{case.label}-{name}", url, model, plan.workload, work_dir, plan.client_cores
                )
            comparison = _compare(runs)
            console.print(_table(case.label, runs, comparison))
            results[case.label] = {
                "through_model": case.through_model,
                "direct_model": case.direct_model,
                "runs": runs,
                **comparison,
            }
    return results


@app.command()
def main(
    model_dir: Annotated[Path, typer.Option(help="Model directory vLLM serves.")] = (
        DEFAULT_MODEL_DIR
    ),
    adapter_root: Annotated[
        Path | None,
        typer.Option(help="Adapters for the gateway (<root>/<name>/v<N>/adapter_config.json)."),
    ] = None,
    adapter_model: Annotated[
        str | None, typer.Option(help="Also compare this adapter model (e.g. a route name).")
    ] = None,
    num_prompts: Annotated[int, typer.Option(min=1, max=5000)] = 64,
    max_concurrency: Annotated[int, typer.Option(min=1, max=256)] = 16,
    input_len: Annotated[int, typer.Option(min=1, max=512)] = 32,
    output_len: Annotated[int, typer.Option(min=1, max=512)] = 32,
    request_rate: Annotated[str, typer.Option(help="Requests per second, or inf.")] = "inf",
    num_warmups: Annotated[int, typer.Option(min=0)] = 4,
    rounds: Annotated[
        int,
        typer.Option(
            min=1, max=5, help="Through runs; each sits between two direct runs (drift check)."
        ),
    ] = 1,
    engine_port: Annotated[int, typer.Option()] = 8043,
    gateway_port: Annotated[int, typer.Option()] = 8044,
    engine_cores: Annotated[
        str, typer.Option(help="VLLM_CPU_OMP_THREADS_BIND for the engine.")
    ] = "auto",
    client_cores: Annotated[
        str | None,
        typer.Option(
            help="Cores for the gateway and the load tool, e.g. 1 (with --engine-cores 0): "
            "keeps them from disturbing the engine's OpenMP threads."
        ),
    ] = None,
    bench_timeout: Annotated[float, typer.Option(help="Seconds allowed per bench run.")] = 900.0,
    start_timeout: Annotated[
        float, typer.Option(help="Seconds allowed for vLLM to start.")
    ] = 300.0,
    keep_logs: Annotated[
        Path | None, typer.Option(help="Keep logs and raw bench results in this directory.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Compare vLLM's throughput through the gateway with direct access, on the same load."""
    if adapter_model is not None and adapter_root is None:
        raise typer.BadParameter("--adapter-model needs --adapter-root")
    if not (model_dir / "config.json").is_file():
        raise typer.BadParameter(f"no model at {model_dir}")
    workload = Workload(
        tokenizer=model_dir,
        num_prompts=num_prompts,
        max_concurrency=max_concurrency,
        input_len=input_len,
        output_len=output_len,
        request_rate=request_rate,
        num_warmups=num_warmups,
        timeout_s=bench_timeout,
    )
    plan = Plan(
        model_dir=model_dir,
        adapter_root=adapter_root,
        adapter_model=adapter_model,
        workload=workload,
        rounds=rounds,
        engine_port=engine_port,
        gateway_port=gateway_port,
        engine_cores=engine_cores,
        client_cores={int(c) for c in client_cores.split(",")} if client_cores else None,
        start_timeout_s=start_timeout,
        keep_logs=keep_logs,
    )
    try:
        results, load_before, load_after = run_guarded(lambda: run(plan))
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after. "
        "through/direct: mean of the through runs over the mean of the direct runs "
        f"(aim >= {AIM_RATIO}); its latency columns: through minus direct"
    )
    for label, result in results.items():
        console.print(
            f"{label}: direct runs spread over {result['direct_spread']:.1%} of their mean tok/s"
        )
    if json_out is not None:
        config = {
            "model_dir": str(model_dir),
            "adapter_model": adapter_model,
            "workload": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(workload).items()
            },
            "engine_cores": engine_cores,
            "client_cores": client_cores,
            "aim_ratio": AIM_RATIO,
        }
        report = {
            "benchmark": "gateway-throughput",
            "config": config,
            "load_average": {"before": load_before, "after": load_after},
            "results": results,
        }
        write_json(json_out, report)
        console.print(f"results written to {json_out}")


if __name__ == "__main__":
    app()
