"""What the request path hands to the response log, and what is read from it off the path.

The request path only fills a `Served` (references, no parsing, no copies); the writer reads
token counts and texts out of it in a worker thread: from the answer's `usage` (for a
stream, from its usage event) and from the request's `messages` or `prompt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class Served:
    """One answered request, as the request path saw it."""

    request_id: str
    tenant: str
    endpoint: str
    route: str
    version: int | None
    variant: str | None
    rollout_id: int | None
    status: int
    stream: bool
    # Wall-clock time the request arrived (epoch seconds).
    at: float
    latency_s: float
    ttft_s: float | None
    # The uniform draw that decides sampling: text and scorers with a rate above it.
    draw: float
    # The request body, when its text may be kept or scored (else None).
    payload: dict[str, Any] | None
    # The answer: the whole body, or the stream's events when its text may be kept.
    body: bytes
    # A stream's usage event (its JSON), when the engine sent one.
    usage: bytes | None = None


def token_counts(served: Served) -> tuple[int | None, int | None]:
    """(prompt tokens, completion tokens) from the answer's usage, when it has one."""
    raw = served.usage if served.stream else served.body
    if not raw or served.status != 200:
        return None, None
    try:
        usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        return None, None
    if not isinstance(usage, dict):
        return None, None
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def answer_text(served: Served) -> str | None:
    """The first choice's text (a stream's pieces joined); None when there is none."""
    if served.status != 200:
        return None
    return text_of(served.body, served.stream)


def text_of(body: bytes | str, stream: bool) -> str | None:
    """The first choice's text of an answer body: a whole JSON answer, or a stream's events
    (its pieces joined); None when there is none."""
    if not body:
        return None
    if isinstance(body, str):
        body = body.encode()
    if not stream:
        try:
            return _choice_text(json.loads(body), "message")
        except ValueError:
            return None
    pieces: list[str] = []
    for line in body.split(b"\n"):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        try:
            piece = _choice_text(json.loads(line[6:]), "delta")
        except ValueError:
            continue
        if piece:
            pieces.append(piece)
    return "".join(pieces) if pieces else None


def prompt_text(payload: dict[str, Any] | None) -> str | None:
    """A request's prompt as text: chat messages as `role: content` lines, or the prompt."""
    if payload is None:
        return None
    messages = payload.get("messages")
    if isinstance(messages, list):
        lines = []
        for message in messages:
            if isinstance(message, dict):
                lines.append(f"{message.get('role', '?')}: {content_text(message.get('content'))}")
        return "\n".join(lines)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return None


def last_user_text(payload: dict[str, Any] | None) -> str | None:
    """What the user asked last: the last user message, or the prompt."""
    if payload is None:
        return None
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
        return None
    return prompt_text(payload)


def content_text(content: Any) -> str:
    """A message's content as text (the text parts of a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def bounded(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters (NUL characters dropped: databases refuse them)."""
    if text is None:
        return None
    return text[:limit].replace("\x00", "")


def utc(epoch_s: float) -> datetime:
    """An epoch time as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, UTC)


def _choice_text(body: Any, field: str) -> str | None:
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    part = choice.get(field)
    if isinstance(part, dict) and isinstance(part.get("content"), str):
        return str(part["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
