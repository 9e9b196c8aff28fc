"""`lora-gateway hooks` against a live gateway and a loopback receiver: the secret is printed
once, with a warning; lists show fingerprints; `test` and `messages` show the receiver's
answers; `remove` ends the subscription."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from typer.testing import CliRunner, Result

from gateway.cli import app as cli
from gateway.testing.receiver import Behaviour, WebhookReceiver
from gateway.testing.server import serve_in_loop

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    """A webhook receiver on loopback, served from a thread with its own event loop."""
    app = WebhookReceiver()
    started: Future[str] = Future()
    stop = threading.Event()

    async def serve() -> None:
        async with serve_in_loop(app) as url:
            started.set_result(url)
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield app, started.result(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)


def hooks(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["hooks", *args, "--url", url], env={"COLUMNS": "200"})


def ok(url: str, *args: str) -> str:
    result = hooks(url, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_add_list_test_messages_remove(
    gateway_url: str, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, base = receiver
    added = hooks(
        gateway_url, "add", base + "/ok", "--event", "rollout.promoted", "--description", "pipeline"
    )
    assert added.exit_code == 0, added.output
    secret = added.stdout.split("secret: ", 1)[1].split()[0]
    assert secret.startswith("whsec_")
    assert "not shown again" in added.stderr
    app.expect("/ok", secret, Behaviour(status=202))

    listed = ok(gateway_url, "list")
    assert "pipeline" in listed and "rollout.promoted" in listed and secret not in listed

    tested = ok(gateway_url, "test", "1")
    assert "delivered, HTTP 202" in tested
    assert app.received[0].verified

    shown = ok(gateway_url, "messages", "1", "--status", "delivered")
    assert "hook.test" in shown and "delivered" in shown and "202" in shown

    assert "removed webhook 1" in ok(gateway_url, "remove", "1")
    assert ok(gateway_url, "list").strip() == "no webhooks"


def test_a_refused_test_exits_1_with_the_answer(
    gateway_url: str, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, base = receiver
    added = hooks(gateway_url, "add", base + "/down", "--json")
    assert added.exit_code == 0, added.output
    app.expect("/down", json.loads(added.stdout)["secret"], Behaviour(status=500))
    result = hooks(gateway_url, "test", "1")
    assert result.exit_code == 1
    assert "not delivered (retry), HTTP 500" in result.stdout


def test_a_bad_url_is_refused_with_the_reason(gateway_url: str) -> None:
    result = hooks(gateway_url, "add", "ftp://example.com/x")
    assert result.exit_code == 1
    assert "http:// or https://" in result.stderr
