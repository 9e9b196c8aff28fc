"""The gateway's errors: one tree, turned into HTTP in one place (`gateway.api.errors`).

GatewayError                      500 internal_error
├── InvalidRequest                400 invalid_request_error
│   ├── BodyTooLarge              413 invalid_request_error / body_too_large
│   └── InvalidDocument           400 invalid_request_error (a whole document: every problem)
│       ├── InvalidRouteTable     400 invalid_request_error / invalid_route_table
│       ├── InvalidScorerConfig   400 invalid_request_error / invalid_scorer_config
│       └── InvalidSloConfig      400 invalid_request_error / invalid_slos
├── Unauthorized                  401 invalid_request_error / invalid_api_key
├── PermissionDenied              403 permission_error
├── RateLimited                   429 rate_limit_error (with Retry-After)
├── ModelNotFound                 404 invalid_request_error / model_not_found
├── RouteNotFound                 404 invalid_request_error / not_found
├── AdapterNotFound               404 invalid_request_error / adapter_not_found (registry)
├── RolloutNotFound               404 invalid_request_error / rollout_not_found
├── ResponseNotFound              404 invalid_request_error / response_not_found (feedback)
├── Conflict                      409 invalid_request_error / conflict (registry state)
├── ClassifierUnavailable         503 classifier_unavailable (the embedding model is missing)
└── UpstreamError                 502 upstream_error
    ├── AdapterLoadFailed         502 upstream_error / adapter_load_failed (marked failed)
    ├── UpstreamUnavailable       503 upstream_unavailable (no ready engine, connect failed)
    │   └── NoRoom                503 upstream_unavailable (every adapter slot pinned or busy)
    └── UpstreamTimeout           504 upstream_timeout
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway answers with."""

    status_code = 500
    error_type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape."""
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequest(GatewayError):
    """The request is malformed or has invalid fields."""

    status_code = 400
    error_type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    """The request body exceeds the configured limit."""

    status_code = 413
    code = "body_too_large"


class Unauthorized(GatewayError):
    """No API key, or one the gateway does not know."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    """The key is valid but may not do this (a tenant key on `/admin`, a disallowed adapter)."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class RateLimited(GatewayError):
    """The key's request rate is used up; `retry_after_s` says when to come back."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidDocument(InvalidRequest):
    """A document replaced whole that cannot be used, with every problem found; the one in
    use stays. Subclasses say what the document is and which parameter carried it."""

    what = "document"
    carried_by = "body"

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"invalid {self.what}: " + "; ".join(problems), param=self.carried_by)
        self.problems = problems


class InvalidRouteTable(InvalidDocument):
    """A route table that cannot serve; the one in use stays."""

    code = "invalid_route_table"
    what = "route table"
    carried_by = "routes"


class InvalidScorerConfig(InvalidDocument):
    """A scorer configuration that cannot be used; the one in use stays."""

    code = "invalid_scorer_config"
    what = "scorer config"
    carried_by = "scorers"


class InvalidSloConfig(InvalidDocument):
    """An SLO file that cannot be used; the one in use stays."""

    code = "invalid_slos"
    what = "SLO file"
    carried_by = "slos"


class ModelNotFound(GatewayError):
    """The `model` field names no base model, adapter or adapter version."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RolloutNotFound(GatewayError):
    """The route has no (active) rollout."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "rollout_not_found"


class ResponseNotFound(GatewayError):
    """No answered request of this tenant has that id (unknown, expired, or another's)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "response_not_found"


class RouteNotFound(GatewayError):
    """No such path or method."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class AdapterNotFound(GatewayError):
    """No such adapter (or version) in the registry."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "adapter_not_found"


class Conflict(GatewayError):
    """The registry's state does not allow the change (e.g. leaving `retired`)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class ClassifierUnavailable(GatewayError):
    """The embedding model of `model: "auto"` could not be loaded."""

    status_code = 503
    error_type = "classifier_unavailable"


class UpstreamError(GatewayError):
    """The engine failed to answer properly."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """No engine is ready, or the connection to it failed."""

    status_code = 503
    error_type = "upstream_unavailable"


class AdapterLoadFailed(UpstreamError):
    """The engine refused to load an adapter version, or its files changed (it is marked
    failed)."""

    code = "adapter_load_failed"


class NoRoom(UpstreamUnavailable):
    """Every resident version is pinned or busy: nothing can make room for another."""


class UpstreamTimeout(UpstreamError):
    """The engine did not answer in time."""

    status_code = 504
    error_type = "upstream_timeout"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """Build `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
