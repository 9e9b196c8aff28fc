"""`lora-gateway keys`: make API keys for admins and tenants."""

from __future__ import annotations

import hashlib
import json
import secrets

import typer
from rich.text import Text

from gateway.cli.client import AsJson, emit

keys_app = typer.Typer(no_args_is_help=True, help="Make API keys for admins and tenants.")


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
    emit({"key": key, "sha256": digest}, as_json, howto)
