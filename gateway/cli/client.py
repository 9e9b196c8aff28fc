"""The admin API client the command groups share, and their common options.

Every command that talks to a running gateway calls `request`, which prints why a call
failed and exits 1, and prints its result with `emit` (a human rendering, or the raw JSON
with `--json`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
from datetime import datetime
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

Json = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:8000"

console = Console()
err_console = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="LORA_GATEWAY_URL", help="Gateway base URL.")]
AdminKey = Annotated[
    str | None,
    typer.Option("--admin-key", envvar="LORA_GATEWAY_ADMIN_KEY", help="Admin API key."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")]
Reason = Annotated[str | None, typer.Option(help="Why; kept in the audit log.")]


def make_client(
    url: str, key: str | None, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """Build the admin API client; tests pass a fake transport."""
    # The audit trail names the person behind the admin key.
    headers = {"x-actor": _user()}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    # Loads wait for every replica; a first load into a busy engine can take a while.
    return httpx.Client(base_url=url, headers=headers, timeout=120.0, transport=transport)


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "unknown"


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit 1."""
    err_console.print(f"[red]error: {escape(message)}[/red]", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def request(
    url: str,
    key: str | None,
    method: str,
    path: str,
    *,
    body: Json | None = None,
    params: Json | None = None,
    content: bytes | None = None,
    content_type: str | None = None,
) -> httpx.Response:
    """Call the admin API; on any failure print why and exit 1."""
    headers = {"content-type": content_type} if content_type else None
    try:
        with make_client(url, key) as client:
            response = client.request(
                method, path, json=body, params=params, content=content, headers=headers
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        fail(f"cannot reach the gateway at {url}: {str(exc) or type(exc).__name__}")
    if response.is_error:
        fail(f"{_error_message(response)} (HTTP {response.status_code})")
    return response


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        # Not the gateway's error shape (a proxy in between, say): show what came back.
        return response.text.strip() or response.reason_phrase


def only_set(**fields: Any) -> Json:
    """The fields that are not None (unset options are left to the server's defaults)."""
    return {name: value for name, value in fields.items() if value is not None}


def emit(payload: Any, as_json: bool, *renderables: RenderableType) -> None:
    """Print the raw JSON response, or its human rendering."""
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    for item in renderables:
        # Messages stay on one line so refs and env settings can be copied whole.
        console.print(item, soft_wrap=isinstance(item, str | Text), highlight=False)


def when(iso: str) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS` (unparsable ones unchanged)."""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso
