"""The demo loop's traffic keeps several requests in flight, each from its own user, and
counts what served them by the `x-variant` header."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adapters.demo_loop import Traffic


class Engine:
    """A route that answers slowly, so requests overlap; every other user gets the canary."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = self.most_open = 0
        self.users: list[str] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with engine.lock:
                    engine.open += 1
                    engine.most_open = max(engine.most_open, engine.open)
                    engine.users.append(body["user"])
                time.sleep(0.05)
                with engine.lock:
                    engine.open -= 1
                self.send_response(200)
                if int(body["user"].rsplit("-", 1)[1]) % 2:
                    self.send_header("x-variant", "canary")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def engine() -> Iterator[Engine]:
    running = Engine()
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def test_the_traffic_keeps_several_requests_in_flight_from_distinct_users(
    engine: Engine,
) -> None:
    prompts = [[{"role": "user", "content": "hello"}]]
    traffic = Traffic(engine.url, "route", prompts, "demo", in_flight=4)
    traffic.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(traffic.served.values()) < 24:
        time.sleep(0.05)
    traffic.stopped.set()
    traffic.join(timeout=10)

    assert not traffic.is_alive()
    assert engine.most_open == 4
    assert len(set(engine.users)) == len(engine.users) >= 24
    served = dict(traffic.served)
    assert sum(served.values()) == len(engine.users)
    assert served["canary"] == sum(1 for u in engine.users if int(u.rsplit("-", 1)[1]) % 2)
    assert served["stable"] == len(engine.users) - served["canary"]
