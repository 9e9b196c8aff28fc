"""API keys: who may call `/admin` and `/v1`, and how often (pure ASGI, on the hot path).

Keys are stored only as sha256 hex. Without an admin key, `/admin` is open to loopback
clients only; without tenant keys, `/v1` is. Everything else (health, metrics, docs) is open.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import error_response
from gateway.api.ratelimit import Clock, LocalRateLimiter, RateLimiter
from gateway.config import Settings, TenantKey
from gateway.errors import GatewayError, PermissionDenied, RateLimited, Unauthorized
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

Area = Literal["admin", "v1"]
# Bounded label values of `gateway_auth_refusals_total`.
RefusalReason = Literal["missing_key", "unknown_key", "tenant_on_admin", "not_loopback"]


def hash_key(key: str) -> str:
    """The sha256 hex of a key, as stored in the settings."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits of entropy)."""
    return "lgw-" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request; `adapters` None means every adapter may be used."""

    kind: Literal["admin", "tenant", "anonymous"]
    name: str
    adapters: frozenset[str] | None = None


ADMIN = Principal("admin", "admin")
# A loopback client in open mode (no keys of that kind configured).
ANONYMOUS = Principal("anonymous", "anonymous")


class KeyRing:
    """The configured keys (as hashes), and who each one belongs to."""

    def __init__(self, admin_sha256: str | None, tenants: Sequence[TenantKey]) -> None:
        self.tenants = tuple(tenants)
        self.admin_configured = admin_sha256 is not None
        self.tenants_configured = bool(self.tenants)
        entries: list[tuple[bytes, Principal]] = []
        if admin_sha256 is not None:
            entries.append((admin_sha256.lower().encode(), ADMIN))
        for t in self.tenants:
            adapters = None if t.adapters is None else frozenset(t.adapters)
            entries.append((t.key_sha256.lower().encode(), Principal("tenant", t.name, adapters)))
        if len({digest for digest, _ in entries}) != len(entries):
            # Otherwise one key would silently mean two principals.
            raise ValueError("the admin key and every tenant key must differ")
        self._entries = tuple(entries)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The key ring of the gateway's settings."""
        return cls(settings.admin_key_sha256, settings.tenant_keys)

    def identify(self, key: str) -> Principal | None:
        """Who owns `key`, or None when no configured key matches."""
        digest = hash_key(key).encode()
        found: Principal | None = None
        # Compare with every stored hash, without stopping at a match, so the time taken
        # does not tell whether (or which) key matched.
        for stored, principal in self._entries:
            if hmac.compare_digest(digest, stored):
                found = principal
        return found


class _Refused(Exception):
    def __init__(self, error: GatewayError, reason: RefusalReason | None) -> None:
        self.error = error
        self.reason = reason


class ApiKeyMiddleware:
    """Check the API key of `/admin` and `/v1` requests and rate-limit tenants."""

    def __init__(
        self,
        app: ASGIApp,
        keyring: KeyRing,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.metrics = metrics
        self.limiter = limiter or LocalRateLimiter(keyring.tenants, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        area: Area | None = None
        if path.startswith("/admin"):
            area = "admin"
        elif path.startswith("/v1"):
            area = "v1"
        # Websockets are checked too, so a future websocket route cannot skip the keys.
        if area is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            principal = self._authorize(scope, area)
            if principal.kind == "tenant":
                await self._limit(principal)
        except _Refused as refused:
            if refused.reason is not None:
                self.metrics.auth_refusals.labels(refused.reason).inc()
            request_id = scope.get("state", {}).get("request_id", "-")
            log.debug("request %s: %s refused (%s)", request_id, path, refused.reason)
            await _refuse(refused.error, scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _authorize(self, scope: Scope, area: Area) -> Principal:
        configured = (
            self.keyring.admin_configured if area == "admin" else self.keyring.tenants_configured
        )
        if not configured:
            if _is_loopback(scope):
                return ANONYMOUS
            kind = "admin key" if area == "admin" else "tenant keys"
            message = f"No {kind} configured: /{area} is open to loopback clients only."
            raise _Refused(PermissionDenied(message), "not_loopback")
        key = _presented_key(scope)
        if key is None:
            message = "Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`."
            raise _Refused(Unauthorized(message), "missing_key")
        principal = self.keyring.identify(key)
        if principal is None:
            raise _Refused(Unauthorized("Invalid API key."), "unknown_key")
        if area == "admin" and principal.kind != "admin":
            raise _Refused(PermissionDenied("Tenant keys may not call /admin."), "tenant_on_admin")
        return principal

    async def _limit(self, principal: Principal) -> None:
        wait_s = await self.limiter.take(principal.name)
        if wait_s > 0:
            self.metrics.rate_limited.labels(principal.name).inc()
            message = "Rate limit of this API key exceeded; retry later."
            raise _Refused(RateLimited(message, retry_after_s=wait_s), None)


def _presented_key(scope: Scope) -> str | None:
    # `Authorization: Bearer` wins over `x-api-key` (what OpenAI clients send).
    api_key: str | None = None
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return api_key


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    host = str(client[0])
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 clients as ::ffff:127.0.0.1.
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


async def _refuse(error: GatewayError, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": ""})
        return
    response = error_response(error)
    if isinstance(error, Unauthorized):
        response.headers["www-authenticate"] = "Bearer"
    await response(scope, receive, send)


def check_adapter_allowed(principal: Principal | None, route: str, base_model: str) -> None:
    """Raise PermissionDenied when `principal` may not use adapter `route`."""
    # None: no key middleware installed (e.g. a test app), so nothing to restrict.
    if principal is None or principal.adapters is None:
        return
    if route == base_model or route in principal.adapters:
        return
    raise PermissionDenied(f"This API key may not use model {route!r}.", param="model")


def principal_of(scope: Scope) -> Principal | None:
    """The principal the key middleware stored for this request, if any."""
    principal = scope.get("state", {}).get("principal")
    return principal if isinstance(principal, Principal) else None


def describe_open_mode(admin_configured: bool, tenants_configured: bool) -> list[str]:
    """Start-up warnings for the areas left open to loopback clients."""
    # Behind a reverse proxy on the same host every client looks like loopback.
    lines = []
    if not admin_configured:
        lines.append("no admin key configured: /admin is open to loopback clients only")
    if not tenants_configured:
        lines.append("no tenant keys configured: /v1 is open to loopback clients only")
    if lines:
        lines.append("a reverse proxy on this host makes every client look like loopback")
    return lines
