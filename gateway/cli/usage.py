"""`lora-gateway usage`: requests, errors and tokens per tenant, route, version, variant or
endpoint, read from the gateway's response log."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from gateway.cli.client import DEFAULT_URL, AdminKey, AsJson, Json, Url, emit, request, when


class By(StrEnum):
    """What usage can be grouped by."""

    tenant = "tenant"
    route = "route"
    version = "version"
    variant = "variant"
    endpoint = "endpoint"


def usage(
    since: Annotated[str, typer.Option(help="From: an ISO time or an age (30m, 24h, 7d).")] = "24h",
    until: Annotated[str | None, typer.Option(help="Until (default: now).")] = None,
    by: Annotated[
        list[By] | None, typer.Option("--by", help="Group by (repeat; default tenant, route).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many rows.")] = 100,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Requests, errors and tokens per group, largest token use first."""
    params: Json = {"since": since, "limit": limit}
    if until is not None:
        params["until"] = until
    if by:
        params["by"] = [b.value for b in by]
    payload = request(url, admin_key, "GET", "/admin/usage", params=params).json()
    emit(payload, as_json, _table(payload))


def _table(payload: Json) -> Table:
    title = f"usage {when(payload['since'])} → {when(payload['until'])} (UTC)"
    table = Table(title=title)
    for key in payload["by"]:
        table.add_column(key)
    for column in ("requests", "errors", "prompt tokens", "completion tokens"):
        table.add_column(column, justify="right")
    for group in payload["groups"]:
        keys = [
            str(group["key"].get(k) if group["key"].get(k) is not None else "-")
            for k in payload["by"]
        ]
        table.add_row(
            *keys,
            f"{group['requests']:,}",
            f"{group['errors']:,}",
            f"{group['prompt_tokens']:,}",
            f"{group['completion_tokens']:,}",
        )
    return table
