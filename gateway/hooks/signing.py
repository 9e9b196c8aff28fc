"""Signing secrets and the signed headers of one attempt (Standard Webhooks).

A secret is `whsec_` and the base64 of 24 to 64 random bytes. The signature is
`v1,<base64 HMAC-SHA256>` over `<webhook-id>.<webhook-timestamp>.<body>`, computed by the
`standardwebhooks` package so receivers can check it with the same package. The id stays
the same on every attempt of a message; the timestamp is the attempt's own, so a receiver
can refuse old replays while a late retry still verifies.

A secret is shown once, when its subscription is created; after that only its fingerprint
(the first hex digits of its sha256), which identifies it without revealing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import datetime

from standardwebhooks import Webhook

PREFIX = "whsec_"
MIN_BYTES = 24
MAX_BYTES = 64
NEW_BYTES = 32
USER_AGENT = "lora-gateway-hooks"


def new_secret() -> str:
    """A fresh signing secret."""
    return PREFIX + base64.b64encode(secrets.token_bytes(NEW_BYTES)).decode("ascii")


def secret_problem(secret: str) -> str | None:
    """What is wrong with a secret a caller chose (None: it is usable). Never quotes it."""
    if not secret.startswith(PREFIX):
        return f"secret must start with {PREFIX!r}"
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return f"secret must be {PREFIX!r} followed by standard base64"
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        return f"secret must encode {MIN_BYTES} to {MAX_BYTES} random bytes, not {len(key)}"
    return None


def fingerprint(secret: str) -> str | None:
    """The first 8 hex digits of the secret's sha256 (None when it was erased)."""
    if not secret:
        return None
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def signed_headers(secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The headers of one attempt to deliver `body`, signed at `at`."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }
