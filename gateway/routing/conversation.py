"""The texts a request is routed by: its last user message, and the user turns before it.

A chat request carries its conversation, so the conversation is the session: a follow-up
is read with the user turns the client sent before it, on any replica, with no state kept
between requests. A completion `prompt` has no earlier turns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.routing.embedder import Vectors

# At most this many characters of an earlier turn are kept (it is embedded truncated anyway).
EARLIER_TURN_CHARS = 2000


@dataclass(frozen=True)
class Conversation:
    """The last user message and up to `turns` user messages before it (oldest first)."""

    text: str
    earlier: tuple[str, ...] = ()


def conversation_of(payload: Mapping[str, Any], turns: int = 0) -> Conversation:
    """What a request (`messages`, `prompt`, or a bare `text`) is routed by."""
    if "text" in payload and isinstance(payload["text"], str):
        return Conversation(payload["text"].strip())
    messages = payload.get("messages")
    if isinstance(messages, list):
        users = [
            text
            for message in messages
            if isinstance(message, dict) and message.get("role") == "user"
            for text in [_content_text(message.get("content"))]
        ]
        if not users:
            return Conversation("")
        earlier = [t[:EARLIER_TURN_CHARS] for t in users[:-1] if t][-turns:] if turns else []
        return Conversation(users[-1], tuple(earlier))
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return Conversation(prompt.strip())
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return Conversation("\n".join(prompt).strip())
    # Token-id prompts carry no text to classify.
    return Conversation("")


def request_text(payload: Mapping[str, Any]) -> str:
    """The text a request is routed by: the last user message, or the completion prompt."""
    return conversation_of(payload).text


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        return "\n".join(p for p in parts if isinstance(p, str)).strip()
    return ""


def context_vector(last: Vectors, earlier: Sequence[Vectors], weight: float) -> Vectors:
    """The conversation as one unit vector: the last message weighs 1, the turn before it
    `weight`, the one before that `weight / 2`, and so on (`earlier` oldest first)."""
    total = last.astype(np.float32).copy()
    for back, vector in enumerate(reversed(earlier)):
        total += (weight / 2**back) * vector
    unit: Vectors = (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32)
    return unit
