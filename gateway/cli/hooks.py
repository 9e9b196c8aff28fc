"""`lora-gateway hooks`: webhooks that tell receivers (a training pipeline, say) about rollouts.

A subscription is a URL and the rollout events it wants; each message is signed with the
subscription's secret (Standard Webhooks) and sent at least once. The secret is printed
once, by `hooks add`: keep it where the receiver can read it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.cli.client import (
    DEFAULT_URL,
    AdminKey,
    AsJson,
    Json,
    Url,
    emit,
    err_console,
    request,
    when,
)
from gateway.hooks.events import EVENT_NAMES

hooks_app = typer.Typer(
    no_args_is_help=True, help="Send signed webhooks on rollout events to receivers."
)
HookId = Annotated[int, typer.Argument(min=1, help="The subscription's id (`hooks list`).")]
STATUS_STYLES = {"pending": "yellow", "delivered": "green", "dead": "red"}


def _events(events: list[str]) -> str:
    return ", ".join(events) if events else "every event"


def _hooks_table(hooks: list[Json]) -> Table:
    table = Table("id", "url", "events", "description", "secret", "created", "by")
    for hook in hooks:
        table.add_row(
            str(hook["id"]) + ("" if hook["active"] else " (removed)"),
            escape(hook["url"]),
            escape(_events(hook["events"])),
            escape(hook["description"]),
            hook["secret_fingerprint"] or "-",
            when(hook["created_at"]),
            escape(hook["created_by"]),
        )
    return table


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _messages_table(messages: list[Json]) -> Table:
    table = Table("message", "event", "status", "attempts", "created", "last answer", "next")
    for message in messages:
        last = message["last_status"] if message["last_status"] is not None else "-"
        error = message["last_error"]
        table.add_row(
            message["id"],
            message["event"],
            _status(message["status"]),
            str(len(message["attempts"])),
            when(message["created_at"]),
            escape(f"{last}: {error}" if error else str(last)),
            when(message["next_attempt_at"]) if message["next_attempt_at"] else "",
        )
    return table


def _attempts_table(messages: list[Json]) -> Table:
    table = Table("message", "at", "status", "latency", "error", title="attempts")
    for message in messages:
        for attempt in message["attempts"]:
            table.add_row(
                message["id"],
                when(attempt["at"]),
                "-" if attempt["status"] is None else str(attempt["status"]),
                f"{attempt['latency_ms']:.0f} ms",
                escape(attempt["error"] or ""),
            )
    return table


@hooks_app.command()
def add(
    target: Annotated[str, typer.Argument(metavar="URL", help="The receiver's http(s) URL.")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help=f"An event to send (repeat; default: every one). One of {', '.join(EVENT_NAMES)}.",
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="What the receiver is.")] = "",
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Subscribe URL to rollout events; prints the signing secret, once."""
    body: Json = {"url": target, "events": event or [], "description": description}
    hook = request(url, admin_key, "POST", "/admin/hooks", body=body).json()
    emit(
        hook,
        as_json,
        f"added webhook {hook['id']}: {escape(hook['url'])} ({escape(_events(hook['events']))})",
        f"secret: {hook['secret']}",
    )
    if not as_json:
        err_console.print(
            "[yellow]warning: the secret is not shown again; give it to the receiver now "
            "(it verifies each message's webhook-signature with it)[/yellow]",
            soft_wrap=True,
        )


@hooks_app.command("list")
def list_(
    removed: Annotated[bool, typer.Option("--all", help="Removed subscriptions too.")] = False,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """The webhook subscriptions (secrets as fingerprints)."""
    params = {"all": "true"} if removed else None
    payload = request(url, admin_key, "GET", "/admin/hooks", params=params).json()
    hooks = payload["data"]
    emit(payload, as_json, _hooks_table(hooks) if hooks else "no webhooks")


@hooks_app.command()
def remove(
    hook_id: HookId, url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """Remove a subscription: nothing more is sent to it (its history stays)."""
    hook = request(url, admin_key, "DELETE", f"/admin/hooks/{hook_id}").json()
    emit(hook, as_json, f"removed webhook {hook['id']}: {escape(hook['url'])}")


@hooks_app.command()
def test(
    hook_id: HookId, url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """Send a `hook.test` message now and show what the receiver answered."""
    r = request(url, admin_key, "POST", f"/admin/hooks/{hook_id}/test").json()
    answer = "no answer" if r["status"] is None else f"HTTP {r['status']}"
    verdict = "delivered" if r["delivered"] else f"not delivered ({r['outcome']})"
    line = f"{r['message_id']}: {verdict}, {answer} in {r['latency_ms']:.0f} ms"
    emit(r, as_json, escape(line + (f": {r['error']}" if r["error"] else "")))
    if not r["delivered"]:
        raise typer.Exit(1)


@hooks_app.command()
def messages(
    hook_id: HookId,
    status: Annotated[
        str | None, typer.Option(help="Only pending, delivered or dead messages.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many messages.")] = 50,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """A subscription's newest messages with every delivery attempt."""
    params: Json = {"limit": limit}
    if status is not None:
        params["status"] = status
    path = f"/admin/hooks/{hook_id}/messages"
    payload = request(url, admin_key, "GET", path, params=params).json()
    found = payload["data"]
    if not found:
        emit(payload, as_json, "no messages")
        return
    tables = [_messages_table(found)]
    if any(m["attempts"] for m in found):
        tables.append(_attempts_table(found))
    emit(payload, as_json, *tables)
