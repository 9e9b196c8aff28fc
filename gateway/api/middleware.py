"""Pure ASGI middleware: request ids, the body-size limit and the access log line (cheap on
the hot path)."""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import BodyTooLarge
from gateway.observability.logs import ACCESS_FIELDS, log_request

REQUEST_ID_HEADER = "x-request-id"
# Client ids are echoed in headers and logs: keep them short and printable.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestContextMiddleware:
    """Give every request an id (the client's, if sane), enforce the body limit and, when
    `access_log`, log one line per request once its response is sent."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, access_log: bool = True) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        content_length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        request_id = request_id or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        started = time.perf_counter()
        status = 0
        logged = not self.access_log

        def log_once(final_status: int) -> None:
            nonlocal logged
            if not logged:
                logged = True
                path = scope.get("path", "")
                log_request(
                    request_id,
                    scope["method"],
                    path,
                    final_status,
                    started,
                    state.get(ACCESS_FIELDS),
                )

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log_once(status)

        limit = self.max_body_bytes
        if content_length > limit:
            await _reject_too_large(send_with_id, limit)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(_too_large_message(limit))
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            # A response that never finished (the client left, or an error escaped).
            log_once(status or 500)


def _too_large_message(limit: int) -> str:
    return f"Request body exceeds the limit of {limit} bytes."


async def _reject_too_large(send: Send, limit: int) -> None:
    error = BodyTooLarge(_too_large_message(limit))
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
