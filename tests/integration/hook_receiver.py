"""A webhook receiver on loopback for the integration tests, in a thread of the test: it
verifies each message's signature (`standardwebhooks`), keeps what it verified, and can be
down (nothing listens on its port), hanging (it never answers) or up."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from gateway.testing.server import free_port


class Receiver:
    """Messages verified (headers and payload), and how many failed verification."""

    def __init__(self, *, up: bool = True) -> None:
        self.secret = ""
        self.verified: list[dict[str, Any]] = []
        self.rejected = 0
        self.hanging = threading.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._server: ThreadingHTTPServer | None = None
        if up:
            self.start()

    def start(self) -> None:
        """Listen (again)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                while receiver.hanging.is_set():
                    time.sleep(0.05)  # never answer while hanging: the sender times out
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                except Exception:
                    receiver.rejected += 1
                    self.send_response(400)
                else:
                    receiver.verified.append({"headers": headers, "payload": payload})
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The verified payloads of one event type."""
        return [m["payload"] for m in self.verified if m["payload"]["type"] == kind]
