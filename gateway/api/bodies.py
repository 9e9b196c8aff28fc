"""Admin bodies that are whole documents (YAML or JSON text), not JSON objects."""

from __future__ import annotations

from fastapi import Request

from gateway.errors import InvalidRequest


async def document_text(request: Request, *, limit: int, param: str, what: str) -> str:
    """The body as UTF-8 text: a 400 naming `param` when it is too big, not text, or blank."""
    raw = await request.body()
    if len(raw) > limit:
        raise InvalidRequest(f"the {what} is over {limit} bytes", param=param)
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the {what} must be UTF-8 text", param=param) from exc
    if not source.strip():
        raise InvalidRequest(f"the body must be a {what} (YAML or JSON)", param=param)
    return source
