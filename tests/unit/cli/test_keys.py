"""`lora-gateway keys`."""

from __future__ import annotations

import hashlib
import json
import re

from typer.testing import CliRunner, Result

from gateway.cli import app


def invoke(*args: str) -> Result:
    # A wide terminal keeps each setting on one line.
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, list(args))


def test_keys_new_prints_a_key_matching_its_sha256() -> None:
    result = invoke("keys", "new")
    assert result.exit_code == 0, result.output
    key = re.search(r"key:\s+(lgw-\S+)", result.stdout)
    digest = re.search(r"sha256:\s+([0-9a-f]{64})", result.stdout)
    assert key and digest
    assert hashlib.sha256(key[1].encode()).hexdigest() == digest[1]
    assert f"GATEWAY_ADMIN_KEY_SHA256={digest[1]}" in result.stdout
    tenants = re.search(r"GATEWAY_TENANT_KEYS='(.*)'", result.stdout)
    assert tenants and json.loads(tenants[1])[0]["key_sha256"] == digest[1]


def test_keys_new_json_is_the_key_and_its_sha256() -> None:
    result = invoke("keys", "new", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"key", "sha256"}
    assert hashlib.sha256(payload["key"].encode()).hexdigest() == payload["sha256"]
