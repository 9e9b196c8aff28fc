"""A webhook receiver for tests: it checks each message's signature as a real receiver would
(`standardwebhooks`' `Webhook(secret).verify`), records it, and answers as told: a status
per subscription path in turn, after a delay, or never (it holds the request until the
sender gives up and disconnects).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class Received:
    """One request the receiver got, and whether its signature verified."""

    path: str
    webhook_id: str
    timestamp: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int | None

    @property
    def payload(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class Behaviour:
    """How one path answers: `statuses` in turn, then `status`; `hang` never answers."""

    status: int = 200
    statuses: deque[int] = field(default_factory=deque)
    delay_s: float = 0.0
    hang: bool = False


class WebhookReceiver:
    """An ASGI app; serve it with `gateway.testing.server.serve_in_loop`."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.behaviours: dict[str, Behaviour] = {}
        self.received: list[Received] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight_per_id: Counter[str] = Counter()
        self.max_in_flight_per_path: Counter[str] = Counter()
        self._per_path: Counter[str] = Counter()

    def expect(self, path: str, secret: str, behaviour: Behaviour | None = None) -> None:
        """Receive on `path` with `secret`, answering as `behaviour` says."""
        self.secrets[path] = secret
        self.behaviours[path] = behaviour or Behaviour()

    def delivered(self, path: str | None = None) -> list[Received]:
        """The requests answered with a 2xx (on `path`, or anywhere)."""
        return [
            r
            for r in self.received
            if r.answered is not None
            and 200 <= r.answered < 300
            and (path is None or r.path == path)
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        webhook_id = headers.get("webhook-id", "")
        behaviour = self.behaviours.get(path, Behaviour(status=404))
        self.in_flight[webhook_id] += 1
        self._per_path[path] += 1
        self.max_in_flight_per_id[webhook_id] = max(
            self.max_in_flight_per_id[webhook_id], self.in_flight[webhook_id]
        )
        self.max_in_flight_per_path[path] = max(
            self.max_in_flight_per_path[path], self._per_path[path]
        )
        answered: int | None = None
        try:
            if behaviour.hang:
                # Until the sender gives up (its disconnect is the next message).
                while (await receive())["type"] != "http.disconnect":
                    pass
                return
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
            status = behaviour.statuses.popleft() if behaviour.statuses else behaviour.status
            answered = status
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"answer %d" % status})
        finally:
            self.in_flight[webhook_id] -= 1
            self._per_path[path] -= 1
            self.received.append(
                Received(
                    path=path,
                    webhook_id=webhook_id,
                    timestamp=headers.get("webhook-timestamp", ""),
                    headers=headers,
                    body=body,
                    verified=self._verifies(path, body, headers),
                    answered=answered,
                )
            )

    def _verifies(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        secret = self.secrets.get(path)
        if secret is None:
            return False
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True
