"""Turn every failure into OpenAI's error JSON with the right status, in one place."""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import GatewayError, RateLimited, error_body

log = logging.getLogger(__name__)


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request."""
    return str(getattr(request.state, "request_id", "-"))


def invalid_json_message(problem: str, document: str | bytes, position: int) -> str:
    """What is wrong with a body that is not JSON, and where (line and column, 1-based)."""
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    before = text[:position]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1) + 1
    return f"Request body is not valid JSON: {problem} (line {line}, column {column})."


def error_response(error: GatewayError) -> JSONResponse:
    """A JSON error response for a gateway error."""
    headers = {"retry-after": "1"} if error.status_code == 503 else None
    if isinstance(error, RateLimited):
        headers = {"retry-after": str(max(1, math.ceil(error.retry_after_s)))}
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that shape every error like OpenAI's."""

    async def on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        if exc.status_code >= 500:
            log.warning("request %s: %s %s", request_id_of(request), exc.status_code, exc.message)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            # FastAPI puts the character offset where a field name goes: say what is wrong.
            loc = first.get("loc", ())
            position = loc[-1] if loc and isinstance(loc[-1], int) else 0
            problem = first.get("ctx", {}).get("error", "JSON decode error")
            message = invalid_json_message(problem, exc.body or "", position)
            return JSONResponse(error_body(message, "invalid_request_error"), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = first.get("msg", "Invalid request.")
        param = ".".join(loc) or None
        return JSONResponse(
            error_body(f"{param}: {message}" if param else message, "invalid_request_error", param),
            status_code=400,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        error_type = "invalid_request_error" if status < 500 else "internal_error"
        return JSONResponse(
            error_body(message, error_type, None, code),
            status_code=status,
            headers=getattr(exc, "headers", None),
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s: unexpected error", request_id_of(request))
        return JSONResponse(
            error_body("The gateway failed to handle the request.", "internal_error"),
            status_code=500,
        )

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
