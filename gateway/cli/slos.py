"""`lora-gateway slos`: show and replace the SLOs rollout analysis holds each route to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from gateway.analysis.slo import read_slo_source
from gateway.cli.client import Json
from gateway.cli.documents import DocumentApi

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

SLOS.commands(slos_app, "SLO file")
