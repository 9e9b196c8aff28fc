"""`lora-gateway adapters` and `lora-gateway keys`: manage the gateway through its admin API."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

Json = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:8000"
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
keys_app = typer.Typer(no_args_is_help=True, help="Make API keys for admins and tenants.")
console = Console()
err_console = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="LORA_GATEWAY_URL", help="Gateway base URL.")]
AdminKey = Annotated[
    str | None,
    typer.Option("--admin-key", envvar="LORA_GATEWAY_ADMIN_KEY", help="Admin API key."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")]
Name = Annotated[str, typer.Argument(help="Adapter name.")]
Version = Annotated[int, typer.Argument(min=1, help="Adapter version.")]
Reason = Annotated[str | None, typer.Option(help="Why; kept in the audit log.")]


def _client(
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


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error: {escape(message)}[/red]", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def _request(
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
        with _client(url, key) as client:
            response = client.request(
                method, path, json=body, params=params, content=content, headers=headers
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        _fail(f"cannot reach the gateway at {url}: {str(exc) or type(exc).__name__}")
    if response.is_error:
        _fail(f"{_error_message(response)} (HTTP {response.status_code})")
    return response


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        # Not the gateway's error shape (a proxy in between, say): show what came back.
        return response.text.strip() or response.reason_phrase


def _body(**fields: Any) -> Json:
    return {name: value for name, value in fields.items() if value is not None}


def _version_path(name: str, version: int) -> str:
    return f"/admin/adapters/{quote(name, safe='')}/versions/{version}"


def _emit(payload: Any, as_json: bool, *renderables: RenderableType) -> None:
    """Print the raw JSON response, or its human rendering."""
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    for item in renderables:
        # Messages stay on one line so refs and env settings can be copied whole.
        console.print(item, soft_wrap=isinstance(item, str | Text), highlight=False)


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


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
            _when(v["created_at"]),
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
        _fail(f"cannot read manifest {path}: {exc}")
    if not isinstance(manifest, dict):
        _fail(f"manifest {path} must be a JSON object, not {type(manifest).__name__}")
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
    result = _request(url, key, "POST", path, body=body).json()
    _emit(result, as_json, f"{done} {result['ref']}", _versions_table([result], replica_urls=True))


@adapters_app.command("list")
def list_(url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False) -> None:
    """List every adapter version with its state and residency."""
    payload = _request(url, admin_key, "GET", "/admin/adapters").json()
    versions = [v for adapter in payload["data"] for v in adapter["versions"]]
    _emit(payload, as_json, _versions_table(versions) if versions else "no adapters registered")


@adapters_app.command()
def show(
    name: Name, url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """Show one adapter's versions and a summary of each manifest."""
    adapter = _request(url, admin_key, "GET", f"/admin/adapters/{quote(name, safe='')}").json()
    versions = adapter["versions"]
    _emit(
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
    body = _body(
        name=name,
        path=path,
        sha256=sha256,
        base_model=base_model,
        manifest=_read_manifest(manifest) if manifest else None,
        reason=reason,
    )
    response = _request(url, admin_key, "POST", "/admin/adapters", body=body)
    version = response.json()
    done = "registered" if response.status_code == 201 else "already registered as"
    _emit(version, as_json, f"{done} {version['ref']}", _versions_table([version]))


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
    _change("load", "loaded", name, version, _body(pin=pin, reason=reason), url, admin_key, as_json)


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
    body = _body(reason=reason)
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
    body = _body(reason=reason)
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
    result = _request(url, admin_key, "DELETE", _version_path(name, version)).json()
    _emit(result, as_json, f"deleted {result['name']}@{result['version']}")


@adapters_app.command()
def audit(
    adapter: Annotated[str | None, typer.Option(help="Only this adapter's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent events.")] = 50,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Show recent admin actions, newest last."""
    params = _body(adapter=adapter, limit=limit)
    payload = _request(url, admin_key, "GET", "/admin/audit", params=params).json()
    table = Table("id", "at", "actor", "action", "adapter", "reason", "detail")
    for event in payload["data"]:
        ref = (
            event["adapter"]
            if event["version"] is None
            else f"{event['adapter']}@{event['version']}"
        )
        table.add_row(
            str(event["id"]),
            _when(event["at"]),
            escape(event["actor"]),
            escape(event["action"]),
            escape(ref),
            escape(event["reason"]),
            escape(json.dumps(event["detail"])) if event["detail"] else "",
        )
    _emit(payload, as_json, table if payload["data"] else "no audit events")


@keys_app.command()
def new(as_json: AsJson = False) -> None:
    """Print a fresh random API key, its sha256, and how to configure it."""
    key = "lgw-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    tenant = [
        {"name": "team-a", "key_sha256": digest, "adapters": ["pirate"], "rate_per_minute": 120}
    ]
    howto = Text(
        f"key:    {key}\n"
        f"sha256: {digest}\n\n"
        "Give the key to its holder; the gateway is configured with the sha256 only.\n"
        f"As the admin key:  GATEWAY_ADMIN_KEY_SHA256={digest}\n"
        f"As a tenant key:   GATEWAY_TENANT_KEYS='{json.dumps(tenant)}'"
    )
    _emit({"key": key, "sha256": digest}, as_json, howto)
