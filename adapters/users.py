"""Simulated users for the demo loop and the rollout tests: `in_flight` threads asking one
after another until stopped, each request numbered once (`ask(i)`), so every user id is
distinct and the engine sees several requests at a time to batch."""

from __future__ import annotations

import threading


class Users(threading.Thread):
    """Run `ask(i)` for i = 0, 1, 2, ... from `in_flight` threads until `stopped` is set;
    subclasses record what they get under `lock`."""

    def __init__(self, in_flight: int = 4) -> None:
        super().__init__(daemon=True)
        self.in_flight = in_flight
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self._next = 0

    def ask(self, i: int) -> None:
        """Send request number `i` and record its answer."""
        raise NotImplementedError

    def run(self) -> None:
        users = [threading.Thread(target=self._user, daemon=True) for _ in range(self.in_flight)]
        for user in users:
            user.start()
        for user in users:
            user.join()

    def _user(self) -> None:
        while not self.stopped.is_set():
            with self.lock:
                i, self._next = self._next, self._next + 1
            self.ask(i)
