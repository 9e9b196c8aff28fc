"""`lora-gateway routes`: the route table of `model: "auto"`.

`show`, `apply` and `classify` talk to a running gateway's admin API; `calibrate` runs the
classifier here, on a table file and a labelled JSONL set, without a gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

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
from gateway.routing.calibrate import Report, evaluate, load_samples
from gateway.routing.table import DEMO_TABLE, parse_table, read_table_source

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
    text: Annotated[str, typer.Argument(help="The text to route.")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Where a text would be routed, with every route's similarity."""
    payload = request(url, admin_key, "POST", "/admin/classify", body={"text": text}).json()
    scores = Table("route", "similarity")
    for name, score in sorted(payload["scores"].items(), key=lambda kv: -kv[1]):
        scores.add_row(escape(name), f"{score:.3f}")
    adapter = payload["adapter"] or "base model"
    line = (
        f"{payload['route']} ({adapter}): {payload['method']}, {payload['reason']}, "
        f"confidence {payload['confidence']:.3f}"
    )
    if payload["threshold"] is not None:
        line += f", threshold {payload['threshold']:.2f}"
    emit(payload, as_json, line, scores)


@routes_app.command()
def calibrate(
    data: Annotated[Path, typer.Argument(help='Labelled JSONL: {"text": ..., "route": ...}.')],
    table: Annotated[str, typer.Option(help="A route table (YAML), or `demo`.")] = DEMO_TABLE,
    max_offtopic: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Largest share of default prompts sent to adapters."),
    ] = 0.05,
    markdown: Annotated[
        Path | None, typer.Option(help="Also write the report as Markdown here.")
    ] = None,
    mistakes: Annotated[int, typer.Option(min=0, help="Misrouted prompts to list.")] = 10,
    as_json: AsJson = False,
) -> None:
    """Evaluate a table on labelled prompts: accuracy, precision and recall per route,
    confusion matrix, and a suggested threshold."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gateway.routing.classifier import RouteIndex
    from gateway.routing.embedder import ModelMissing, load_embedder

    try:
        route_table = parse_table(_read_source(table))
    except InvalidRouteTable as exc:
        fail(exc.message)
    known = [r.name for r in route_table.routes] + [route_table.default.name]
    try:
        samples = load_samples(data, known)
    except (OSError, ValueError) as exc:
        fail(f"{data}: {exc}")
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

    async def embed_many(texts: list[str]) -> object:
        return embedder.embed(texts)

    index = asyncio.run(RouteIndex.build(route_table, embed_many))  # type: ignore[arg-type]
    report = evaluate(index, embedder, samples, max_offtopic=max_offtopic)
    if markdown is not None:
        markdown.write_text(report_markdown(report, table, data), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report_json(report), indent=2))
        return
    for renderable in report_tables(report, mistakes):
        console.print(renderable, highlight=False)


def report_json(report: Report) -> Json:
    """The report as plain JSON."""
    return {
        "samples": len(report.samples),
        "accuracy": report.accuracy,
        "offtopic_to_adapter": report.offtopic_to_adapter,
        "suggested_threshold": report.suggested_threshold,
        "max_offtopic": report.max_offtopic,
        "routes": [asdict(r) for r in report.routes],
        "labels": report.labels,
        "confusion": report.confusion,
        "sweep": [asdict(p) for p in report.sweep],
        "mistakes": [
            {"text": s.text, "label": s.route, "routed": d.route, "reason": d.reason}
            for s, d in report.mistakes
        ],
    }


def _headline(report: Report) -> str:
    suggested = report.suggested_threshold
    hint = "none meets the off-topic limit" if suggested is None else f"{suggested:.2f}"
    return (
        f"{len(report.samples)} prompts: accuracy {report.accuracy:.1%}, default prompts sent "
        f"to an adapter {report.offtopic_to_adapter:.1%}; suggested threshold {hint} "
        f"(off-topic limit {report.max_offtopic:.0%})"
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
    sweep = Table("threshold", "accuracy", "default -> adapter", "on-topic -> default")
    for point in report.sweep[::5]:
        sweep.add_row(
            f"{point.threshold:.2f}",
            f"{point.accuracy:.1%}",
            f"{point.offtopic_to_adapter:.1%}",
            f"{point.on_topic_to_default:.1%}",
        )
    out: list[object] = [_headline(report), per_route, confusion, sweep]
    for sample, decision in report.mistakes[:mistakes]:
        out.append(
            f"  {sample.route} -> {decision.route} ({decision.reason}, "
            f"{decision.confidence:.2f}): {escape(sample.text)}"
        )
    return out


def report_markdown(report: Report, table: str, data: Path) -> str:
    """The report as Markdown (for docs/)."""
    lines = [
        f"Table `{table}`, labelled set `{data.name}`. {_headline(report)}.",
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
        "One threshold for every route:",
        "",
        "| threshold | accuracy | default -> adapter | on-topic -> default |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {p.threshold:.2f} | {p.accuracy:.1%} | {p.offtopic_to_adapter:.1%} "
            f"| {p.on_topic_to_default:.1%} |"
            for p in report.sweep[15:61:5]
        ),
        "",
    ]
    return "\n".join(lines)
