"""`lora-gateway slos`: show and replace the SLOs rollout analysis holds each route to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from gateway.analysis.slo import read_slo_source
from gateway.cli.client import DEFAULT_URL, AdminKey, AsJson, Json, Url
from gateway.cli.documents import DocumentApi, DryRun, ReasonText, ShowSource

slos_app = typer.Typer(no_args_is_help=True, help="Show and replace the per-route SLOs.")
SloFile = Annotated[str, typer.Argument(help="An SLO file (YAML), or `demo`.")]


def _table(payload: Json) -> Table:
    table = Table("route", "signal", "critical")
    for route, signals in payload["routes"].items():
        for signal in signals:
            table.add_row(
                escape(route), escape(signal["name"]), "yes" if signal["critical"] else ""
            )
    return table


def _describe(payload: Json, verb: str) -> str:
    routes = f"{len(payload['routes'])} routes"
    if payload["defaults"]:
        routes += ", defaults for the others"
    if not payload["stored"]:
        return f"{verb}: the SLO file is valid ({routes}); nothing was changed"
    return f"{verb} SLO file {payload['id']} ({routes}), by {payload['created_by']}"


def _render(payload: Json, verb: str) -> tuple[RenderableType, ...]:
    return _describe(payload, verb), _table(payload)


SLOS = DocumentApi("/admin/slos", read_slo_source, _render)


@slos_app.command()
def show(
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    source: ShowSource = False,
) -> None:
    """Show the SLO file in use."""
    SLOS.show(url, admin_key, as_json=as_json, source=source)


@slos_app.command()
def apply(
    file: SloFile,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
    dry_run: DryRun = False,
    reason: ReasonText = "",
) -> None:
    """Replace the SLO file (checked whole first; a bad one changes nothing)."""
    SLOS.apply(url, admin_key, file, as_json=as_json, dry_run=dry_run, reason=reason)
