"""Evaluation: every set and slice the spec names, answered through the gateway by the new
adapter (`name@N`), the base model and the route's stable version, scored on the task's
metrics, with contaminated rows set aside, and the gates applied.

Answers are greedy (temperature 0), so a re-run measures the same thing. Asking the gateway,
not a local copy, measures what is served: the engine's quantized base with the adapter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from adapters.client import GatewayClient
from adapters.contamination import ContaminationIndex, Overlap
from adapters.data import read_dataset
from adapters.metrics import TaskMetrics
from adapters.spec import LoadedSpec
from adapters.train import Example

GENERAL: Final = "general"
# Means of a few hundred rows: a drop of exactly the allowance must pass (0.8 - 0.7 > 0.1).
_TOLERANCE: Final = 1e-9
# Requests in flight, over every set and variant at once: the engine batches them.
CONCURRENCY: Final = 32
# Called as each set's answers come back: (set, variant, answered, total).
Progress = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class EvalSet:
    """One set or slice to score: its clean rows, its metrics, what was set aside."""

    name: str
    rows: tuple[Example, ...]
    metrics: tuple[str, ...]
    excluded: tuple[Overlap, ...] = ()
    total: int = 0


@dataclass
class SetResult:
    """One set's mean metrics per variant, and each row's answers (for the report)."""

    name: str
    rows: int
    excluded: list[dict[str, Any]]
    means: dict[str, dict[str, float]] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Gate:
    """One gate's outcome."""

    name: str
    passed: bool
    value: float | None
    threshold: float
    reason: str


def eval_sets(
    loaded: LoadedSpec, training: Sequence[Example], held_out: Sequence[Example]
) -> list[EvalSet]:
    """The spec's sets and slices, each with the rows that overlap `training` set aside."""
    spec = loaded.spec
    index = ContaminationIndex(training, spec.evaluation.ngram)
    task_metrics = tuple(spec.task.metrics)
    named: list[tuple[str, Sequence[Example], tuple[str, ...]]] = [
        ("held_out", held_out, task_metrics)
    ]
    if spec.evaluation.golden is not None:
        golden = read_dataset(loaded.path(spec.evaluation.golden)).rows
        named.append(("golden", golden, task_metrics))
    for slice_name, path in spec.evaluation.slices.items():
        named.append((f"slices.{slice_name}", read_dataset(loaded.path(path)).rows, task_metrics))
    if spec.evaluation.general is not None:
        general = read_dataset(loaded.path(spec.evaluation.general)).rows
        named.append((GENERAL, general, ("contains",)))
    sets = []
    for name, rows, metrics in named:
        clean, excluded = index.split(rows)
        sets.append(EvalSet(name, tuple(clean), metrics, tuple(excluded), len(rows)))
    return sets


def answer_all(
    client: GatewayClient,
    jobs: Sequence[tuple[str, Sequence[Example]]],
    max_tokens: int,
    progress: Callable[[int, int], None] | None = None,
    concurrency: int = CONCURRENCY,
) -> list[list[str]]:
    """Greedy answers of each job's model to each of its rows, in order.

    Every job's rows share one pool of `concurrency` requests, so the engine's batch stays
    full across sets and variants instead of draining at the end of each small set;
    `progress(job, answered)` follows each job."""
    done = [0] * len(jobs)
    lock = threading.Lock()

    def one(item: tuple[int, str, Example]) -> str:
        job, model, row = item
        text = client.complete(model, row.messages(), max_tokens)
        with lock:
            done[job] += 1
            count = done[job]
        if progress is not None:
            progress(job, count)
        return text

    items = [(job, model, row) for job, (model, rows) in enumerate(jobs) for row in rows]
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, items))
    out: list[list[str]] = []
    for _, rows in jobs:
        out.append(answers[: len(rows)])
        del answers[: len(rows)]
    return out


def evaluate(
    loaded: LoadedSpec,
    client: GatewayClient,
    sets: Sequence[EvalSet],
    variants: dict[str, str],
    progress: Progress | None = None,
) -> list[SetResult]:
    """Score each variant (`{"candidate": "name@3", "base": ..., "stable": ...}`) on each set."""
    spec = loaded.spec
    fixture = None
    if spec.task.sql_fixture is not None:
        fixture = loaded.path(spec.task.sql_fixture).read_text(encoding="utf-8")
    pairs = [(eval_set, variant) for eval_set in sets for variant in variants]

    def tick(job: int, answered: int) -> None:
        if progress is not None:
            eval_set, variant = pairs[job]
            progress(eval_set.name, variant, answered, len(eval_set.rows))

    jobs = [(variants[variant], eval_set.rows) for eval_set, variant in pairs]
    answered = iter(answer_all(client, jobs, spec.evaluation.max_tokens, tick))
    results = []
    for eval_set in sets:
        scorer = TaskMetrics(eval_set.metrics, spec.task.verifiers, fixture)
        result = SetResult(
            eval_set.name,
            len(eval_set.rows),
            [{"row": o.index + 1, "kind": o.kind, "detail": o.detail} for o in eval_set.excluded],
        )
        for variant in variants:
            answers = next(answered)
            scores = [
                scorer.score(answer, row.response, row.prompt)
                for answer, row in zip(answers, eval_set.rows, strict=True)
            ]
            result.answers[variant] = answers
            result.means[variant] = {
                metric: (sum(s[metric] for s in scores) / len(scores)) if scores else float("nan")
                for metric in eval_set.metrics
            }
        results.append(result)
    return results


def check_gates(loaded: LoadedSpec, results: Sequence[SetResult]) -> list[Gate]:
    """Every gate of the spec against the results, each with why it passed or failed."""
    gates = loaded.spec.gates
    by_name = {r.name: r for r in results}
    out: list[Gate] = []
    for key, least in gates.min.items():
        where, _, metric = key.rpartition(".")
        chosen = [r for r in results if r.name != GENERAL] if where == "*" else [by_name.get(where)]
        if not chosen:
            out.append(Gate(f"min {key}", False, None, least, "no task set was measured"))
        for result in chosen:
            name = f"min {result.name if result else where}.{metric}"
            value = _mean(result, "candidate", metric)
            if value is None:
                out.append(Gate(name, False, None, least, f"{key} was not measured"))
                continue
            out.append(
                Gate(
                    name,
                    value >= least,
                    value,
                    least,
                    f"{value:.3f} {'≥' if value >= least else '<'} {least:.3f} (n={result.rows})"
                    if result
                    else "",
                )
            )
    for metric, most in gates.max_regression.items():
        for result in results:
            if result.name == GENERAL or metric not in result.means.get("candidate", {}):
                continue
            new, old = _mean(result, "candidate", metric), _mean(result, "stable", metric)
            name = f"max regression {result.name}.{metric}"
            if result.rows == 0:
                out.append(Gate(name, False, None, most, "not measured: no rows left"))
                continue
            if old is None or new is None:
                out.append(Gate(name, True, None, most, "no stable version to compare with"))
                continue
            drop = old - new
            out.append(
                Gate(
                    name,
                    drop <= most + _TOLERANCE,
                    drop,
                    most,
                    _change("stable", old, new, most),
                )
            )
    if gates.max_general_loss is not None:
        general = by_name.get(GENERAL)
        most = gates.max_general_loss
        new, base = _mean(general, "candidate", "contains"), _mean(general, "base", "contains")
        if new is None or base is None:
            out.append(Gate("max general loss", False, None, most, "no general set was measured"))
        else:
            loss = base - new
            out.append(
                Gate(
                    "max general loss",
                    loss <= most + _TOLERANCE,
                    loss,
                    most,
                    _change("base", base, new, most),
                )
            )
    return out


def _change(against: str, old: float, new: float, most: float) -> str:
    """`stable 0.458 → new 0.608: gained 0.150`, or what was lost against what is allowed."""
    head = f"{against} {old:.3f} → new {new:.3f}"
    loss = old - new
    if loss <= 0:
        return f"{head}: gained {-loss:.3f}" if loss < 0 else f"{head}: unchanged"
    within = loss <= most + _TOLERANCE
    return f"{head}: lost {loss:.3f} ({'≤' if within else '>'} {most:.3f} allowed)"


def _mean(result: SetResult | None, variant: str, metric: str) -> float | None:
    if result is None or result.rows == 0:
        return None
    value = result.means.get(variant, {}).get(metric)
    return value


def report_json(
    name: str, variants: dict[str, str], results: Sequence[SetResult], gates: Sequence[Gate]
) -> dict[str, Any]:
    """The report as data (what `evaluation.json` holds and the lineage records)."""
    return {
        "adapter": name,
        "variants": variants,
        "sets": {
            r.name: {
                "rows": r.rows,
                "excluded": r.excluded,
                "means": r.means,
                # Every answer, so a surprising number can be read off the rows behind it.
                "answers": r.answers,
            }
            for r in results
        },
        "gates": [
            {
                "gate": g.name,
                "passed": g.passed,
                "value": g.value,
                "threshold": g.threshold,
                "reason": g.reason,
            }
            for g in gates
        ],
        "passed": all(g.passed for g in gates),
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one table per set, then the gates."""
    variants = list(report["variants"])
    lines = [f"# Evaluation of {report['adapter']}", ""]
    lines.append(
        "Models: " + ", ".join(f"{v} = `{model}`" for v, model in report["variants"].items())
    )
    lines.append("")
    for name, data in report["sets"].items():
        excluded = len(data["excluded"])
        lines.append(f"## {name} ({data['rows']} rows, {excluded} excluded as contaminated)")
        lines.append("")
        metrics = sorted({m for means in data["means"].values() for m in means})
        lines.append("| metric | " + " | ".join(variants) + " |")
        lines.append("| --- |" + " ---: |" * len(variants))
        for metric in metrics:
            cells = [data["means"].get(v, {}).get(metric) for v in variants]
            shown = ["-" if c is None else f"{c:.3f}" for c in cells]
            lines.append(f"| {metric} | " + " | ".join(shown) + " |")
        for item in data["excluded"]:
            lines.append(f"- excluded row {item['row']} ({item['kind']}): {item['detail']}")
        lines.append("")
    lines.append("## Gates")
    lines.append("")
    for gate in report["gates"]:
        mark = "pass" if gate["passed"] else "**FAIL**"
        lines.append(f"- {mark} {gate['gate']}: {gate['reason']}")
    lines.append("")
    lines.append(f"Result: {'passed' if report['passed'] else 'FAILED'}")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write `evaluation.json` and `evaluation.md` into `out_dir` (each atomically)."""
    import json
    import os

    paths = (out_dir / "evaluation.json", out_dir / "evaluation.md")
    texts = (json.dumps(report, indent=2, ensure_ascii=False) + "\n", report_markdown(report))
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths
