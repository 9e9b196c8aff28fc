"""`lora-gateway adapters`: register, load, retire and audit adapter versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.cli.client import (
    DEFAULT_URL,
    AdminKey,
    AsJson,
    Json,
    Reason,
    Url,
    emit,
    fail,
    only_set,
    request,
    when,
)

STATE_STYLES = {
    "ready": "green",
    "failed": "red",
    "retired": "dim",
    "registered": "yellow",
    "loading": "yellow",
}

adapters_app = typer.Typer(
    no_args_is_help=True, help="Register, load, retire and audit adapter versions."
)

Name = Annotated[str, typer.Argument(help="Adapter name.")]
Version = Annotated[int, typer.Argument(min=1, help="Adapter version.")]


def _version_path(name: str, version: int) -> str:
    return f"/admin/adapters/{quote(name, safe='')}/versions/{version}"


def _versions_table(versions: list[Json], *, replica_urls: bool = False) -> Table:
    table = Table(
        "adapter", "version", "state", "rank", "resident on", "pinned", "sha256", "created"
    )
    for v in versions:
        resident: list[str] = v["resident_on"]
        table.add_row(
            escape(v["name"]),
            str(v["version"]),
            Text(v["state"], style=STATE_STYLES.get(v["state"], "")),
            str(v["rank"]),
            escape("\n".join(resident) if replica_urls else str(len(resident))),
            "yes" if v["pinned"] else "no",
            v["sha256"][:12],
            when(v["created_at"]),
        )
    return table


def _manifest_summary(manifest: Json, width: int = 60) -> str:
    lines = []
    for key, value in manifest.items():
        text = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"{key}: {text if len(text) <= width else text[: width - 3] + '...'}")
    return "\n".join(lines) or "-"


def _manifest_table(versions: list[Json]) -> Table:
    table = Table("version", "base model", "target modules", "manifest")
    for v in versions:
        table.add_row(
            str(v["version"]),
            escape(v["base_model"]),
            escape(", ".join(v["target_modules"])),
            escape(_manifest_summary(v["manifest"])),
        )
    return table


def _read_manifest(path: Path) -> Json:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read manifest {path}: {exc}")
    if not isinstance(manifest, dict):
        fail(f"manifest {path} must be a JSON object, not {type(manifest).__name__}")
    return manifest


def _change(
    action: str,
    done: str,
    name: str,
    version: int,
    body: Json,
    url: str,
    key: str | None,
    as_json: bool,
) -> None:
    """POST a state change for one version and print the version it leaves."""
    path = f"{_version_path(name, version)}/{action}"
    result = request(url, key, "POST", path, body=body).json()
    emit(result, as_json, f"{done} {result['ref']}", _versions_table([result], replica_urls=True))


@adapters_app.command("list")
def list_(url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False) -> None:
    """List every adapter version with its state and residency."""
    payload = request(url, admin_key, "GET", "/admin/adapters").json()
    versions = [v for adapter in payload["data"] for v in adapter["versions"]]
    emit(payload, as_json, _versions_table(versions) if versions else "no adapters registered")


@adapters_app.command()
def show(
    name: Name, url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """Show one adapter's versions and a summary of each manifest."""
    adapter = request(url, admin_key, "GET", f"/admin/adapters/{quote(name, safe='')}").json()
    versions = adapter["versions"]
    emit(
        adapter,
        as_json,
        _versions_table(versions, replica_urls=True),
        _manifest_table(versions),
    )


@adapters_app.command()
def register(
    name: Name,
    path: Annotated[str, typer.Argument(help="Adapter directory, relative to the adapter root.")],
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 of the content.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model it was trained on.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="JSON file with the adapter's manifest.")
    ] = None,
    reason: Reason = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Register an adapter version; registering the same content again is a no-op."""
    body = only_set(
        name=name,
        path=path,
        sha256=sha256,
        base_model=base_model,
        manifest=_read_manifest(manifest) if manifest else None,
        reason=reason,
    )
    response = request(url, admin_key, "POST", "/admin/adapters", body=body)
    version = response.json()
    done = "registered" if response.status_code == 201 else "already registered as"
    emit(version, as_json, f"{done} {version['ref']}", _versions_table([version]))


@adapters_app.command()
def load(
    name: Name,
    version: Version,
    pin: Annotated[bool, typer.Option("--pin", help="Keep it resident; never evict it.")] = False,
    reason: Reason = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Load a version onto the replicas."""
    body = only_set(pin=pin, reason=reason)
    _change("load", "loaded", name, version, body, url, admin_key, as_json)


@adapters_app.command()
def unload(
    name: Name,
    version: Version,
    reason: Reason = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Unload a version from the replicas."""
    body = only_set(reason=reason)
    _change("unload", "unloaded", name, version, body, url, admin_key, as_json)


@adapters_app.command()
def retire(
    name: Name,
    version: Version,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log (required).")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Retire a version so it is no longer served (a reason is required)."""
    if not reason.strip():
        raise typer.BadParameter("must not be empty", param_hint="--reason")
    _change("retire", "retired", name, version, {"reason": reason}, url, admin_key, as_json)


@adapters_app.command()
def stable(
    ref: Annotated[str, typer.Argument(metavar="NAME@VERSION", help="The version, e.g. pirate@2.")],
    reason: Reason = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Serve NAME@VERSION under NAME from now on, without a rollout (refused during one)."""
    name, _, number = ref.rpartition("@")
    if not (name and number.isascii() and number.isdigit() and int(number) >= 1):
        raise typer.BadParameter(f"{ref!r} is not NAME@VERSION (e.g. pirate@2)")
    body = only_set(reason=reason)
    _change("stable", "stable version now:", name, int(number), body, url, admin_key, as_json)


@adapters_app.command()
def delete(
    name: Name,
    version: Version,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Delete a version from the registry (asks first unless --yes)."""
    if not yes:
        typer.confirm(f"Delete {name}@{version}? This cannot be undone.", abort=True)
    result = request(url, admin_key, "DELETE", _version_path(name, version)).json()
    emit(result, as_json, f"deleted {result['name']}@{result['version']}")


@adapters_app.command()
def audit(
    adapter: Annotated[str | None, typer.Option(help="Only this adapter's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent events.")] = 50,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Show recent admin actions, newest last."""
    params = only_set(adapter=adapter, limit=limit)
    payload = request(url, admin_key, "GET", "/admin/audit", params=params).json()
    table = Table("id", "at", "actor", "action", "adapter", "reason", "detail")
    for event in payload["data"]:
        ref = (
            event["adapter"]
            if event["version"] is None
            else f"{event['adapter']}@{event['version']}"
        )
        table.add_row(
            str(event["id"]),
            when(event["at"]),
            escape(event["actor"]),
            escape(event["action"]),
            escape(ref),
            escape(event["reason"]),
            escape(json.dumps(event["detail"])) if event["detail"] else "",
        )
    emit(payload, as_json, table if payload["data"] else "no audit events")
