from __future__ import annotations

import hmac
from collections.abc import Sequence

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message

from gateway.api.auth import (
    ApiKeyMiddleware,
    KeyRing,
    Principal,
    check_adapter_allowed,
    describe_open_mode,
    hash_key,
    new_key,
    principal_of,
)
from gateway.config import TenantKey
from gateway.errors import PermissionDenied
from gateway.metrics import Metrics

ADMIN_KEY = "lgw-admin-secret"
ALICE_KEY = "lgw-alice-secret"
BOB_KEY = "lgw-bob-secret"
LOOPBACK = ("127.0.0.1", 123)
REMOTE = ("10.1.2.3", 5000)
CHAT = "/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tenant(name: str, key: str, **limits: object) -> TenantKey:
    return TenantKey.model_validate({"name": name, "key_sha256": hash_key(key), **limits})


async def echo_principal(request: Request) -> JSONResponse:
    principal = principal_of(request.scope)
    assert principal is not None
    adapters = None if principal.adapters is None else sorted(principal.adapters)
    return JSONResponse({"kind": principal.kind, "name": principal.name, "adapters": adapters})


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def make_client(
    metrics: Metrics,
    *,
    admin_key: str | None = ADMIN_KEY,
    tenants: Sequence[TenantKey] = (),
    client: tuple[str, int] = LOOPBACK,
    clock: FakeClock | None = None,
) -> httpx.AsyncClient:
    inner = Starlette(
        routes=[
            Route(CHAT, echo_principal, methods=["POST"]),
            Route("/admin/adapters", ok),
            Route("/healthz", ok),
        ]
    )
    keyring = KeyRing(None if admin_key is None else hash_key(admin_key), tenants)
    app = ApiKeyMiddleware(inner, keyring, metrics, clock=clock or FakeClock())
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def refusals(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value("gateway_auth_refusals_total", {"reason": reason})


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


async def test_admin_without_key_is_401_in_openai_shape() -> None:
    metrics = Metrics()
    async with make_client(metrics, tenants=[tenant("alice", ALICE_KEY)]) as client:
        response = await client.get("/admin/adapters")
    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert refusals(metrics, "missing_key") == 1


async def test_admin_with_wrong_key_is_401() -> None:
    metrics = Metrics()
    async with make_client(metrics) as client:
        response = await client.get("/admin/adapters", headers=bearer("lgw-wrong"))
    assert_openai_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert refusals(metrics, "unknown_key") == 1


async def test_tenant_key_on_admin_is_403() -> None:
    metrics = Metrics()
    async with make_client(metrics, tenants=[tenant("alice", ALICE_KEY)]) as client:
        response = await client.get("/admin/adapters", headers=bearer(ALICE_KEY))
    error = assert_openai_error(response, 403)
    assert error["type"] == "permission_error"
    assert refusals(metrics, "tenant_on_admin") == 1


async def test_admin_key_on_admin_is_allowed_from_anywhere() -> None:
    async with make_client(Metrics(), client=REMOTE) as client:
        response = await client.get("/admin/adapters", headers=bearer(ADMIN_KEY))
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_tenant_key_on_v1_is_allowed_and_named() -> None:
    tenants = [tenant("alice", ALICE_KEY, adapters=["pirate"])]
    async with make_client(Metrics(), tenants=tenants, client=REMOTE) as client:
        response = await client.post(CHAT, headers=bearer(ALICE_KEY))
    assert response.status_code == 200
    assert response.json() == {"kind": "tenant", "name": "alice", "adapters": ["pirate"]}


async def test_unknown_key_on_v1_is_401() -> None:
    metrics = Metrics()
    async with make_client(metrics, tenants=[tenant("alice", ALICE_KEY)]) as client:
        response = await client.post(CHAT, headers=bearer("lgw-unknown"))
    assert_openai_error(response, 401)
    assert refusals(metrics, "unknown_key") == 1


async def test_missing_key_on_v1_is_401() -> None:
    metrics = Metrics()
    async with make_client(metrics, tenants=[tenant("alice", ALICE_KEY)]) as client:
        response = await client.post(CHAT)
    assert_openai_error(response, 401)
    assert refusals(metrics, "missing_key") == 1


async def test_x_api_key_header_is_accepted() -> None:
    async with make_client(Metrics(), tenants=[tenant("alice", ALICE_KEY)]) as client:
        response = await client.post(CHAT, headers={"x-api-key": ALICE_KEY})
    assert response.status_code == 200
    assert response.json()["name"] == "alice"


async def test_non_bearer_authorization_counts_as_missing() -> None:
    metrics = Metrics()
    async with make_client(metrics, tenants=[tenant("alice", ALICE_KEY)]) as client:
        response = await client.post(CHAT, headers={"authorization": f"Basic {ALICE_KEY}"})
    assert_openai_error(response, 401)
    assert refusals(metrics, "missing_key") == 1


async def test_health_is_open_without_key() -> None:
    tenants = [tenant("alice", ALICE_KEY)]
    async with make_client(Metrics(), tenants=tenants, client=REMOTE) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "localhost"]
)
async def test_open_mode_allows_loopback_clients(host: str) -> None:
    async with make_client(Metrics(), admin_key=None, client=(host, 5000)) as client:
        chat = await client.post(CHAT)
        admin = await client.get("/admin/adapters")
    assert chat.status_code == 200
    assert chat.json()["kind"] == "anonymous"
    assert admin.status_code == 200


@pytest.mark.parametrize(("method", "path"), [("POST", CHAT), ("GET", "/admin/adapters")])
async def test_open_mode_refuses_non_loopback_clients(method: str, path: str) -> None:
    metrics = Metrics()
    async with make_client(metrics, admin_key=None, client=REMOTE) as client:
        response = await client.request(method, path)
    error = assert_openai_error(response, 403)
    assert "loopback clients only" in str(error["message"])
    assert refusals(metrics, "not_loopback") == 1


async def test_admin_key_is_allowed_on_v1() -> None:
    tenants = [tenant("alice", ALICE_KEY)]
    async with make_client(Metrics(), tenants=tenants, client=REMOTE) as client:
        response = await client.post(CHAT, headers=bearer(ADMIN_KEY))
    assert response.status_code == 200
    assert response.json()["kind"] == "admin"


async def test_rate_limit_refuses_when_bucket_empty_and_refills() -> None:
    metrics = Metrics()
    clock = FakeClock()
    tenants = [tenant("alice", ALICE_KEY, rate_per_minute=60, burst=2)]
    async with make_client(metrics, tenants=tenants, clock=clock) as client:
        statuses = [(await client.post(CHAT, headers=bearer(ALICE_KEY))).status_code for _ in "ab"]
        limited = await client.post(CHAT, headers=bearer(ALICE_KEY))
        clock.now += 1.0
        again = await client.post(CHAT, headers=bearer(ALICE_KEY))
    assert statuses == [200, 200]
    error = assert_openai_error(limited, 429)
    assert error["type"] == "rate_limit_error"
    assert limited.headers["retry-after"] == "1"
    assert again.status_code == 200
    assert metrics.registry.get_sample_value("gateway_rate_limited_total", {"tenant": "alice"}) == 1


async def test_rate_limit_is_per_tenant() -> None:
    tenants = [
        tenant("alice", ALICE_KEY, rate_per_minute=60, burst=1),
        tenant("bob", BOB_KEY, rate_per_minute=60, burst=1),
    ]
    async with make_client(Metrics(), tenants=tenants) as client:
        first = await client.post(CHAT, headers=bearer(ALICE_KEY))
        limited = await client.post(CHAT, headers=bearer(ALICE_KEY))
        other = await client.post(CHAT, headers=bearer(BOB_KEY))
    assert (first.status_code, limited.status_code, other.status_code) == (200, 429, 200)


async def test_default_burst_is_one_second_of_rate() -> None:
    tenants = [tenant("alice", ALICE_KEY, rate_per_minute=120)]
    async with make_client(Metrics(), tenants=tenants) as client:
        statuses = [(await client.post(CHAT, headers=bearer(ALICE_KEY))).status_code for _ in "abc"]
    assert statuses == [200, 200, 429]


async def test_admin_key_is_not_rate_limited() -> None:
    tenants = [tenant("alice", ALICE_KEY, rate_per_minute=1, burst=1)]
    async with make_client(Metrics(), tenants=tenants) as client:
        statuses = [
            (await client.post(CHAT, headers=bearer(ADMIN_KEY))).status_code for _ in "abcde"
        ]
    assert statuses == [200] * 5


async def test_key_never_appears_in_error_messages() -> None:
    tenants = [tenant("alice", ALICE_KEY, rate_per_minute=1, burst=1)]
    async with make_client(Metrics(), tenants=tenants) as client:
        answers = [
            await client.post(CHAT, headers=bearer("lgw-not-a-real-key")),
            await client.get("/admin/adapters", headers=bearer(ALICE_KEY)),
            await client.post(CHAT, headers=bearer(ALICE_KEY)),
            await client.post(CHAT, headers=bearer(ALICE_KEY)),
        ]
    assert [a.status_code for a in answers] == [401, 403, 200, 429]
    for answer in answers:
        assert "lgw-not-a-real-key" not in answer.text
        assert ALICE_KEY not in answer.text


async def test_websocket_without_key_is_closed() -> None:
    keyring = KeyRing(hash_key(ADMIN_KEY), [])
    sent: list[Message] = []

    async def inner(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the app must not be reached")

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/admin/ws", "headers": [], "client": REMOTE}
    await ApiKeyMiddleware(inner, keyring, Metrics())(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]


def test_check_adapter_allowed_allows_listed_adapter_and_base_model() -> None:
    principal = Principal("tenant", "alice", frozenset({"pirate"}))
    check_adapter_allowed(principal, "pirate", "smollm2")
    check_adapter_allowed(principal, "smollm2", "smollm2")


def test_check_adapter_allowed_refuses_other_adapters() -> None:
    principal = Principal("tenant", "alice", frozenset({"pirate"}))
    with pytest.raises(PermissionDenied) as refused:
        check_adapter_allowed(principal, "french", "smollm2")
    assert refused.value.status_code == 403
    assert refused.value.param == "model"


def test_check_adapter_allowed_lets_unrestricted_principals_through() -> None:
    for principal in (Principal("admin", "admin"), Principal("tenant", "bob"), None):
        check_adapter_allowed(principal, "french", "smollm2")


def test_keyring_identifies_each_of_several_tenants() -> None:
    keys = {"alice": ALICE_KEY, "bob": BOB_KEY, "carol": "lgw-carol-secret"}
    keyring = KeyRing(hash_key(ADMIN_KEY), [tenant(n, k) for n, k in keys.items()])
    for name, key in keys.items():
        principal = keyring.identify(key)
        assert principal is not None and (principal.kind, principal.name) == ("tenant", name)
    assert keyring.identify(ADMIN_KEY) == Principal("admin", "admin")
    assert keyring.identify("lgw-nobody") is None


def test_keyring_compares_with_every_key_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyring = KeyRing(hash_key(ADMIN_KEY), [tenant("alice", ALICE_KEY), tenant("bob", BOB_KEY)])
    compared: list[bytes] = []
    real_compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting_compare)
    for key in (ADMIN_KEY, BOB_KEY, "lgw-nobody"):
        compared.clear()
        keyring.identify(key)
        assert len(set(compared)) == 3


def test_keyring_refuses_a_key_that_is_both_admin_and_tenant() -> None:
    with pytest.raises(ValueError, match="must differ"):
        KeyRing(hash_key(ALICE_KEY), [tenant("alice", ALICE_KEY)])


def test_keyring_keeps_tenant_adapter_limits() -> None:
    keyring = KeyRing(None, [tenant("alice", ALICE_KEY, adapters=["pirate", "french"])])
    principal = keyring.identify(ALICE_KEY)
    assert principal is not None and principal.adapters == frozenset({"pirate", "french"})


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_new_keys_are_distinct_and_prefixed() -> None:
    first, second = new_key(), new_key()
    assert first != second
    assert first.startswith("lgw-") and len(first) > 40


def test_describe_open_mode_warns_per_open_area() -> None:
    assert describe_open_mode(True, True) == []
    both = describe_open_mode(False, False)
    assert any("/admin" in line for line in both) and any("/v1" in line for line in both)
    only_v1 = describe_open_mode(True, False)
    assert any("/v1" in line for line in only_v1)
    assert not any("/admin" in line for line in only_v1)
