"""What a webhook says: the event types and the body every subscriber receives.

The body follows the Standard Webhooks convention: `{"type", "timestamp", "data"}`, written
once when the event happens (compact JSON, sorted keys) and stored as text, so each attempt
sends, and signs, exactly the same bytes.
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any


class HookEvent(enum.StrEnum):
    """The events subscribers can ask for (`hook.test` is sent by `POST /admin/hooks/{id}/test`)."""

    ROLLOUT_STARTED = "rollout.started"
    ROLLOUT_STEP_ADVANCED = "rollout.step_advanced"
    ROLLOUT_PROMOTED = "rollout.promoted"
    ROLLOUT_ROLLED_BACK = "rollout.rolled_back"
    ROLLOUT_PAUSED = "rollout.paused"
    ROLLOUT_RESUMED = "rollout.resumed"
    ROLLOUT_ABORTED = "rollout.aborted"
    ROLLOUT_ALARM = "rollout.alarm"
    ROLLOUT_VERDICT = "rollout.verdict"
    HOOK_TEST = "hook.test"


EVENT_NAMES: tuple[str, ...] = tuple(event.value for event in HookEvent)


def event_of(name: HookEvent | str) -> HookEvent:
    """The event named `name`; ValueError for one the gateway does not send."""
    try:
        return HookEvent(name)
    except ValueError:
        raise ValueError(f"unknown webhook event {name!r}") from None


def iso_utc(at: datetime) -> str:
    """`at` as ISO-8601 in UTC with a `Z` (a naive `at` is taken as UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def body_of(event: HookEvent | str, data: dict[str, Any], at: datetime) -> str:
    """The JSON text sent for `event`: `{"data", "timestamp", "type"}`, compact, keys sorted."""
    envelope = {"type": event_of(event).value, "timestamp": iso_utc(at), "data": data}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True, default=_plain)


def _plain(value: object) -> object:
    # Rollout details carry timestamps; anything else not JSON is a caller's mistake.
    if isinstance(value, datetime):
        return iso_utc(value)
    raise TypeError(f"a webhook's data must be JSON, not {type(value).__name__}")
