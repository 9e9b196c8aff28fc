"""The pipeline's view of a running gateway: its OpenAI API and its admin API, over HTTP only.

A refusal comes back as `GatewayError` carrying the gateway's own message (OpenAI's error
shape), so `register` can say "rank 64 is above the gateway's limit of 16" as the gateway
said it. Requests that meet a busy or restarting gateway (429, 502, 503, a refused
connection) are retried with backoff (tenacity); anything else fails at once.
"""

from __future__ import annotations

import re
from typing import Any, Final

import httpx
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

Json = dict[str, Any]
DEFAULT_URL: Final = "http://127.0.0.1:8000"
_ENGINE_NAME: Final = re.compile(r"^(?P<name>.+)--v(?P<version>\d+)$")
_RETRY_STATUS: Final = frozenset({429, 502, 503})


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached: its message and HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and (exc.status in _RETRY_STATUS or exc.status == 0)


class GatewayClient:
    """Calls one gateway with the admin key (the admin key may call the OpenAI API too)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        admin_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 300.0,
    ) -> None:
        headers = {"x-actor": "adapters-pipeline"}
        if admin_key:
            headers["Authorization"] = f"Bearer {admin_key}"
        self.url = url
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.5, max=8.0),
        reraise=True,
    )
    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Json | None = None,
        content: str | None = None,
    ) -> httpx.Response:
        """One request; `GatewayError` with the gateway's message when it fails."""
        headers = {"content-type": "application/yaml"} if content is not None else None
        try:
            response = self._http.request(
                method, path, json=body, params=params, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.url}: {exc}") from exc
        if response.is_error:
            raise GatewayError(error_message(response), response.status_code)
        return response

    # -- OpenAI API ---------------------------------------------------------------------

    def models(self) -> list[Json]:
        """`/v1/models`."""
        data: list[Json] = self.call("GET", "/v1/models").json()["data"]
        return data

    def base_model(self) -> str:
        """The name the gateway serves its base model under."""
        for entry in self.models():
            if entry.get("parent") is None and entry["id"] != "auto":
                return str(entry["id"])
        raise GatewayError("the gateway lists no base model")

    def stable_version(self, name: str) -> int | None:
        """The version the gateway serves `name` with now (None: no such adapter)."""
        for entry in self.models():
            if entry["id"] == name:
                found = _ENGINE_NAME.match(str(entry.get("root", "")))
                return int(found["version"]) if found else None
        return None

    def complete(self, model: str, messages: list[Json], max_tokens: int) -> str:
        """A greedy chat completion's text."""
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "user": "adapters-evaluate",
        }
        answer = self.call("POST", "/v1/chat/completions", body=body).json()
        return str(answer["choices"][0]["message"].get("content") or "")

    # -- admin API ----------------------------------------------------------------------

    def register(self, body: Json) -> tuple[Json, bool]:
        """Register a version: (the version, whether it is new)."""
        response = self.call("POST", "/admin/adapters", body=body)
        return response.json(), response.status_code == 201

    def adapter(self, name: str) -> Json | None:
        """An adapter with its versions (None: unknown)."""
        try:
            found: Json = self.call("GET", f"/admin/adapters/{name}").json()
        except GatewayError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def rollout(self, route: str) -> Json | None:
        """The route's active or latest rollout (None: it never had one)."""
        try:
            found: Json = self.call("GET", f"/admin/rollouts/{route}").json()
        except GatewayError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def start_rollout(self, route: str, version: int, plan: Json | None, reason: str) -> Json:
        """Start rolling `route@version` out (shadow first, as the plan says)."""
        body: Json = {"route": route, "version": version, "reason": reason}
        if plan is not None:
            body["plan"] = plan
        started: Json = self.call("POST", "/admin/rollouts", body=body).json()
        return started

    def document(self, kind: str) -> str | None:
        """The source of the SLO file (`slos`) or scorer configuration (`scorers`) in use."""
        try:
            found = self.call("GET", f"/admin/{kind}").json()
        except GatewayError as exc:
            if exc.status == 404:
                return None
            raise
        source = found.get("source")
        return source if isinstance(source, str) else None

    def put_document(self, kind: str, source: str, reason: str) -> None:
        """Replace the SLO file or scorer configuration."""
        self.call("PUT", f"/admin/{kind}", content=source, params={"reason": reason})

    def evidence(self, ref: str | int, *, reward_below: float | None = None) -> Json:
        """Every answer of the rollout's candidate that went badly (all pages)."""
        rows: list[Json] = []
        params: Json = {"limit": 1000}
        if reward_below is not None:
            params["reward_below"] = reward_below
        while True:
            page: Json = self.call("GET", f"/admin/rollouts/{ref}/evidence", params=params).json()
            rows.extend(page["data"])
            if not page.get("next_after"):
                page["data"] = rows
                return page
            params["after"] = page["next_after"]


def error_message(response: httpx.Response) -> str:
    """The gateway's error message (OpenAI's shape), else the body as it came."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip() or response.reason_phrase
