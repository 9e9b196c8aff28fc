"""Sticky canary assignment: a pure hash, so every gateway replica gives the same answer.

bucket = the first eight bytes of sha256("<rollout id>:<subject>") modulo 10,000. A subject
is on the canary when its bucket is below the step's bucket count (weight x 100), so raising
the weight only adds buckets: nobody on the canary goes back to stable as the weight rises.
A new rollout (a new id) draws new buckets, so the same users are not always first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from gateway.rollout.plan import BUCKETS

Variant = Literal["stable", "canary"]
SESSION_HEADER = "x-session-id"
# Subjects are cut to this length before hashing (they never reach logs or metrics).
_MAX_SUBJECT = 512


def bucket(rollout_id: int, subject: str) -> int:
    """The subject's bucket in [0, 10000) for this rollout."""
    digest = hashlib.sha256(f"{rollout_id}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def variant(rollout_id: int, subject: str, canary_buckets: int) -> Variant:
    """`canary` when the subject's bucket is among the first `canary_buckets`."""
    return "canary" if bucket(rollout_id, subject) < canary_buckets else "stable"


def subject_of(
    payload: Mapping[str, Any], headers: Mapping[str, str], key_owner: str | None
) -> str:
    """Who the request is for: its `user`, else its `x-session-id`, else its API key.

    The key is known by its owner's name in the key ring (one name per key). Each source is
    prefixed so that a user named like a session id is a different subject. Requests with
    none of the three (open mode, no key) share the one subject `anonymous`.
    """
    user = payload.get("user")
    if isinstance(user, str) and user:
        return "user:" + user[:_MAX_SUBJECT]
    session = headers.get(SESSION_HEADER, "")
    if session:
        return "session:" + session[:_MAX_SUBJECT]
    if key_owner:
        return "key:" + key_owner
    return "anonymous"
