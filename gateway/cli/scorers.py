"""`lora-gateway scorers`: show and replace the quality scorers of each route."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gateway.cli.client import DEFAULT_URL, AdminKey, AsJson, Json, Url, emit, fail, request
from gateway.quality.config import read_scorer_source

scorers_app = typer.Typer(no_args_is_help=True, help="Show and replace the quality scorers.")
ConfigFile = Annotated[str, typer.Argument(help="A scorer configuration (YAML), or `demo`.")]


def _table(payload: Json) -> Table:
    table = Table("route", "scorer", "kind", "sample rate")
    for route, scorers in payload["routes"].items():
        for scorer in scorers:
            table.add_row(
                escape(route), escape(scorer["name"]), scorer["kind"], f"{scorer['sample_rate']:g}"
            )
    return table


def _describe(payload: Json, verb: str) -> str:
    routes = len(payload["routes"])
    if not payload["stored"]:
        return f"{verb}: the configuration is valid ({routes} routes); nothing was changed"
    return (
        f"{verb} scorer configuration {payload['id']} ({routes} routes), by {payload['created_by']}"
    )


@scorers_app.command()
def show(
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    source: Annotated[bool, typer.Option("--source", help="Print the YAML.")] = False,
) -> None:
    """Show the scorer configuration in use."""
    payload = request(url, admin_key, "GET", "/admin/scorers").json()
    if source and not as_json:
        typer.echo(payload["source"], nl=False)
        return
    emit(payload, as_json, _describe(payload, "in use:"), _table(payload))


@scorers_app.command()
def apply(
    config: ConfigFile,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only check it.")] = False,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")] = "",
) -> None:
    """Replace the scorer configuration (checked whole first; a bad one changes nothing)."""
    try:
        text = read_scorer_source(config)
    except OSError as exc:
        fail(f"cannot read {config}: {exc.strerror or exc}")
    response = request(
        url,
        admin_key,
        "PUT",
        "/admin/scorers",
        params={"dry_run": str(dry_run).lower(), "reason": reason},
        content=text.encode(),
        content_type="application/yaml",
    )
    payload = response.json()
    emit(payload, as_json, _describe(payload, "checked" if dry_run else "applied"), _table(payload))
