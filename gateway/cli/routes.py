"""`lora-gateway routes`: the route table of `model: "auto"`.

`show`, `apply` and `classify` talk to a running gateway's admin API; `calibrate` runs the
classifier here, on a table file and a labelled JSONL set, without a gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from gateway.cli.client import (
    DEFAULT_URL,
    AdminKey,
    AsJson,
    Json,
    Url,
    console,
    emit,
    fail,
    request,
)
from gateway.cli.settings import load_settings
from gateway.errors import InvalidRouteTable
from gateway.routing.calibrate import (
    Assessment,
    Interval,
    Report,
    Sample,
    assess,
    evaluate,
    gather,
    learned,
    load_samples,
)
from gateway.routing.table import DEMO_TABLE, RouteTable, parse_table, read_table_source

if TYPE_CHECKING:
    from gateway.routing.classifier import RouteIndex
    from gateway.routing.embedder import Embedder, Vectors

routes_app = typer.Typer(
    no_args_is_help=True, help="Show, replace, try and calibrate the `auto` route table."
)
TableFile = Annotated[str, typer.Argument(help="A route table (YAML), or `demo`.")]


def _read_source(where: str) -> str:
    try:
        return read_table_source(where)
    except OSError as exc:
        fail(f"cannot read {where}: {exc.strerror or exc}")


def _summary_table(summary: Json) -> Table:
    table = Table("route", "adapter", "threshold", "utterances", "keywords", "patterns")
    for route in summary["routes"]:
        table.add_row(
            escape(route["name"]),
            escape(route["adapter"]),
            f"{route['threshold']:.2f}",
            str(route["utterances"]),
            str(route["keywords"]),
            str(route["patterns"]),
        )
    table.add_row(
        escape(summary["default"]), "(base model)", "", str(summary["default_utterances"]), "", ""
    )
    return table


def _describe(payload: Json, verb: str) -> str:
    method = f"{payload['summary']['method']} (k={payload['summary']['k']})"
    if not payload["stored"]:
        return f"{verb}: the table is valid ({method}); nothing was changed"
    return f"{verb} route table {payload['id']} ({method}), by {payload['created_by']}"


@routes_app.command()
def show(
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    source: Annotated[bool, typer.Option("--source", help="Print the table's YAML.")] = False,
) -> None:
    """Show the route table in use."""
    payload = request(url, admin_key, "GET", "/admin/routes").json()
    if source and not as_json:
        typer.echo(payload["source"], nl=False)
        return
    emit(payload, as_json, _describe(payload, "in use:"), _summary_table(payload["summary"]))


@routes_app.command()
def apply(
    table: TableFile,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only check the table.")] = False,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")] = "",
) -> None:
    """Replace the route table (checked whole first; a bad one changes nothing)."""
    params: Json = {"dry_run": str(dry_run).lower(), "reason": reason}
    response = request(
        url,
        admin_key,
        "PUT",
        "/admin/routes",
        params=params,
        content=_read_source(table).encode(),
        content_type="application/yaml",
    )
    payload = response.json()
    verb = "checked" if dry_run else "applied"
    emit(payload, as_json, _describe(payload, verb), _summary_table(payload["summary"]))


@routes_app.command()
def classify(
    text: Annotated[str, typer.Argument(help="The text to route (a chat's last message).")],
    earlier: Annotated[
        list[str] | None,
        typer.Option("--earlier", help="An earlier user turn of the chat (repeat, oldest first)."),
    ] = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Where a text would be routed, why, and every route's score."""
    body: Json = {"text": text}
    if earlier:
        turns = [{"role": "user", "content": turn} for turn in earlier]
        body = {"messages": [*turns, {"role": "user", "content": text}]}
    payload = request(url, admin_key, "POST", "/admin/classify", body=body).json()
    scores = Table("route", "score", title="top routes")
    for entry in payload["top"]:
        scores.add_row(escape(entry["route"]), f"{entry['score']:.3f}")
    adapter = payload["adapter"] or "base model"
    line = (
        f"{payload['route']} ({adapter}): {payload['method']}, {payload['reason']}: "
        f"{escape(payload['explanation'])}"
    )
    emit(payload, as_json, line, scores)


def _labelled(path: Path, table: RouteTable) -> list[Sample]:
    known = [r.name for r in table.routes] + [table.default.name]
    try:
        return load_samples(path, known)
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")


def _local_table(where: str) -> RouteTable:
    try:
        return parse_table(_read_source(where))
    except InvalidRouteTable as exc:
        fail(exc.message)


def _local_index(route_table: RouteTable) -> tuple[RouteIndex, Embedder]:
    """The table's index built here, with the gateway's embedder (no gateway needed)."""
    build, embedder = _local_builder()
    return build(route_table), embedder


def _local_builder() -> tuple[Callable[[RouteTable], RouteIndex], Embedder]:
    """Builds tables' indexes here (vectors and heads cached), and the embedder it uses."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gateway.routing.classifier import RouteIndex
    from gateway.routing.embedder import ModelMissing, load_embedder
    from gateway.routing.headcache import HeadCache
    from gateway.routing.vectorcache import cached

    settings = load_settings()
    routing = settings.routing
    try:
        embedder = load_embedder(
            settings.cache_dir,
            model=routing.model_path,
            tokenizer=routing.tokenizer_path,
            threads=routing.threads,
            max_tokens=routing.max_tokens,
        )
    except (ModelMissing, OSError) as exc:
        fail(str(exc))

    remembering = cached(embedder, settings.cache_dir)

    async def embed_many(texts: list[str]) -> Vectors:
        return remembering.embed(texts)

    heads = HeadCache(settings.cache_dir / "classifier")

    def build(table: RouteTable) -> RouteIndex:
        return asyncio.run(RouteIndex.build(table, embed_many, heads=heads))

    # Labelled prompts go through the cache too: a set evaluated again is not re-embedded.
    return build, remembering


MaxOfftopic = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Largest share of default prompts sent to adapters."),
]
Markdown = Annotated[Path | None, typer.Option(help="Also write the report as Markdown here.")]
Mistakes = Annotated[int, typer.Option(min=0, help="Misrouted prompts to list.")]
TableOption = Annotated[str, typer.Option(help="A route table (YAML), or `demo`.")]


@routes_app.command()
def calibrate(
    data: Annotated[Path, typer.Argument(help='Labelled JSONL: {"text"|"messages", "route"}.')],
    table: TableOption = DEMO_TABLE,
    max_offtopic: MaxOfftopic = 0.05,
    markdown: Markdown = None,
    mistakes: Mistakes = 10,
    as_json: AsJson = False,
) -> None:
    """Evaluate a table on one labelled set at its own thresholds: accuracy, precision and
    recall per route, confusion matrix, and the threshold this set suggests. (To report
    numbers, choose on one set and measure on another: `routes evaluate`.)"""
    route_table = _local_table(table)
    samples = _labelled(data, route_table)
    index, embedder = _local_index(route_table)
    report = evaluate(index, samples, gather(index, embedder, samples), max_offtopic=max_offtopic)
    if markdown is not None:
        text = report_markdown(report, f"Table `{table}`, labelled set `{data.name}`.")
        markdown.write_text(text, encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report_json(report), indent=2))
        return
    for renderable in report_tables(report, mistakes):
        console.print(renderable, highlight=False)


@routes_app.command("evaluate")
def evaluate_command(
    tune: Annotated[Path, typer.Option(help="Labelled JSONL the threshold is chosen on.")],
    test: Annotated[Path, typer.Option(help="Labelled JSONL the numbers are measured on.")],
    table: TableOption = DEMO_TABLE,
    max_offtopic: MaxOfftopic = 0.03,
    folds: Annotated[int, typer.Option(min=0, max=20, help="Cross-validation folds.")] = 2,
    crossfit: Annotated[
        bool,
        typer.Option(
            help="The table learns from the tuning prompts: score each with a head trained "
            "without its fold's prompts (at least two folds)."
        ),
    ] = False,
    markdown: Markdown = None,
    mistakes: Mistakes = 10,
    as_json: AsJson = False,
) -> None:
    """Choose the threshold on a tuning set, measure on a separate test set (Wilson 95%
    intervals), and cross-validate the choice on the tuning set."""
    if tune.resolve() == test.resolve():
        fail("the tuning and the test set must be different files")
    route_table = _local_table(table)
    tuning, testing = _labelled(tune, route_table), _labelled(test, route_table)
    overlap = {s.text for s in tuning if not s.earlier} & {s.text for s in testing}
    if overlap:
        fail(f"{len(overlap)} prompts are in both sets, e.g. {sorted(overlap)[0]!r}")
    leaked = learned(route_table, testing)
    if leaked:
        fail(f"{len(leaked)} test prompts are utterances of the table, e.g. {leaked[0].text!r}")
    taught = learned(route_table, tuning)
    if taught and not crossfit:
        fail(
            f"{len(taught)} tuning prompts are utterances of the table, e.g. "
            f"{taught[0].text!r}: pass --crossfit to score each with a head trained without it"
        )
    build, embedder = _local_builder()
    index = build(route_table)
    result = assess(
        index,
        embedder,
        tuning,
        testing,
        max_offtopic=max_offtopic,
        folds=max(folds, 2) if crossfit else folds,
        crossfit=build if crossfit else None,
    )
    if markdown is not None:
        markdown.write_text(assessment_markdown(result, table, tune, test), encoding="utf-8")
    if as_json:
        payload = {
            "threshold": result.threshold,
            "tuning": report_json(result.tuning),
            "test": report_json(result.test),
            "folds": [asdict(f) for f in result.folds],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(
        f"threshold {_threshold(result.threshold)}, chosen on {tune.name} "
        f"({len(tuning)} prompts, off-topic limit {_limit(max_offtopic)}"
        + (f"; {_crossfit_note(result)}" if result.crossfit else "")
        + ")",
        highlight=False,
    )
    if result.folds:
        console.print(_folds_line(result), highlight=False)
    console.print(f"test set {test.name}:", highlight=False)
    for renderable in report_tables(result.test, mistakes):
        console.print(renderable, highlight=False)


def _crossfit_note(result: Assessment) -> str:
    return f"scored out of fold: each by a head trained without its fold, {len(result.folds)} folds"


def _threshold(value: float | None) -> str:
    return "none meets the off-topic limit (the table's kept)" if value is None else f"{value:.2f}"


def _folds_line(result: Assessment) -> str:
    acc = [f.accuracy for f in result.folds]
    off = [f.offtopic_to_adapter for f in result.folds]
    return (
        f"{len(result.folds)}-fold cross-validation on the tuning set: thresholds "
        + ", ".join(_threshold(f.threshold) for f in result.folds)
        + f"; accuracy {np.mean(acc):.1%} (from {min(acc):.1%} to {max(acc):.1%}), "
        f"default prompts sent to an adapter {np.mean(off):.1%} "
        f"(from {min(off):.1%} to {max(off):.1%})"
    )


def _share(interval: Interval) -> Json:
    return {
        "value": interval.value,
        "hits": interval.hits,
        "total": interval.total,
        "ci95": [interval.low, interval.high],
    }


def report_json(report: Report) -> Json:
    """The report as plain JSON."""
    return {
        "samples": len(report.samples),
        "threshold": report.threshold,
        "accuracy": _share(report.accuracy),
        "offtopic_to_adapter": _share(report.offtopic),
        "suggested_threshold": report.suggested_threshold,
        "max_offtopic": report.max_offtopic,
        "routes": [asdict(r) for r in report.routes],
        "kinds": {kind: _share(i) for kind, i in report.kinds.items()},
        "labels": report.labels,
        "confusion": report.confusion,
        "sweep": [asdict(p) for p in report.sweep],
        "mistakes": [
            {"text": s.text, "label": s.route, "routed": d.route, "reason": d.reason}
            for s, d in report.mistakes
        ],
    }


def _ci(interval: Interval) -> str:
    return (
        f"{interval.value:.1%} ({interval.hits}/{interval.total}; 95% CI "
        f"{interval.low:.1%}-{interval.high:.1%})"
    )


def _headline(report: Report) -> str:
    suggested = report.suggested_threshold
    hint = "none meets the off-topic limit" if suggested is None else f"{suggested:.2f}"
    at = "the table's thresholds" if report.threshold is None else f"threshold {report.threshold}"
    return (
        f"{len(report.samples)} prompts at {at}: accuracy {_ci(report.accuracy)}, default "
        f"prompts sent to an adapter {_ci(report.offtopic)}; this set suggests threshold "
        f"{hint} (off-topic limit {_limit(report.max_offtopic)})"
    )


def report_tables(report: Report, mistakes: int) -> list[object]:
    """The report as rich renderables."""
    per_route = Table("route", "precision", "recall", "support", "routed here")
    for r in report.routes:
        per_route.add_row(
            r.route, f"{r.precision:.1%}", f"{r.recall:.1%}", str(r.support), str(r.predicted)
        )
    confusion = Table("label \\ routed", *report.labels, title="confusion matrix")
    for label, row in zip(report.labels, report.confusion, strict=True):
        confusion.add_row(label, *(str(n) for n in row))
    out: list[object] = [_headline(report), per_route, confusion]
    if report.kinds:
        kinds = Table("kind", "accuracy", "prompts")
        for kind, interval in report.kinds.items():
            kinds.add_row(kind, f"{interval.value:.1%}", str(interval.total))
        out.append(kinds)
    sweep = Table("threshold", "accuracy", "default -> adapter", "on-topic -> default")
    for point in report.sweep[::5]:
        sweep.add_row(
            f"{point.threshold:.2f}",
            f"{point.accuracy:.1%}",
            f"{point.offtopic_to_adapter:.1%}",
            f"{point.on_topic_to_default:.1%}",
        )
    out.append(sweep)
    for sample, decision in report.mistakes[:mistakes]:
        out.append(
            f"  {sample.route} -> {decision.route} ({decision.reason}, "
            f"{decision.confidence:.2f}): {escape(sample.text)}"
        )
    return out


def report_markdown(report: Report, title: str) -> str:
    """The report as Markdown (for docs/)."""
    lines = [
        f"{title} {_headline(report)}.",
        "",
        "| route | precision | recall | support | routed here |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {r.route} | {r.precision:.1%} | {r.recall:.1%} | {r.support} | {r.predicted} |"
            for r in report.routes
        ),
        "",
        "Confusion matrix (rows: label, columns: routed to):",
        "",
        "| label \\ routed | " + " | ".join(report.labels) + " |",
        "| --- |" + " ---: |" * len(report.labels),
        *(
            f"| {label} | " + " | ".join(str(n) for n in row) + " |"
            for label, row in zip(report.labels, report.confusion, strict=True)
        ),
        "",
    ]
    if report.kinds:
        lines += [
            "| kind | accuracy | prompts |",
            "| --- | ---: | ---: |",
            *(f"| {k} | {i.value:.1%} | {i.total} |" for k, i in report.kinds.items()),
            "",
        ]
    return "\n".join(lines)


def _limit(share: float) -> str:
    """An off-topic limit as a percentage: 3%, 2.5%."""
    return f"{share * 100:.3g}%"


def assessment_markdown(result: Assessment, table: str, tune: Path, test: Path) -> str:
    """Tuning choice, cross-validation and test numbers as Markdown."""
    lines = [
        f"Table `{table}`: threshold {_threshold(result.threshold)}, chosen on `{tune.name}` "
        f"({len(result.tuning.samples)} prompts, off-topic limit "
        f"{_limit(result.tuning.max_offtopic)}"
        + (f"; {_crossfit_note(result)}" if result.crossfit else "")
        + ").",
        "",
    ]
    if result.folds:
        lines += [_folds_line(result) + ".", ""]
    lines.append(report_markdown(result.test, f"Test set `{test.name}`:"))
    return "\n".join(lines)
