"""`lora-gateway scorers`: show and replace the quality scorers of each route."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from gateway.cli.client import Json
from gateway.cli.documents import DocumentApi
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


def _render(payload: Json, verb: str) -> tuple[RenderableType, ...]:
    return _describe(payload, verb), _table(payload)


SCORERS = DocumentApi("/admin/scorers", read_scorer_source, _render)

SCORERS.commands(scorers_app, "scorer configuration")
