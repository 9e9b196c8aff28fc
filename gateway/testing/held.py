"""A blocking function whose first call is held open: for tests of what happens when another
change lands while a read is under way."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
WAIT_S = 5.0


class HeldFirstCall(Generic[T]):
    """Calls `inner`; the first call, once it has its result, waits for `release()`."""

    def __init__(self, inner: Callable[[], T]) -> None:
        self._inner = inner
        self._started = threading.Event()
        self._released = threading.Event()
        self.calls = 0

    def __call__(self) -> T:
        result = self._inner()
        self.calls += 1
        if self.calls == 1:
            self._started.set()
            self._released.wait(WAIT_S)
        return result

    async def started(self) -> None:
        """Wait until the first call has read (and is being held)."""
        await asyncio.to_thread(self._started.wait, WAIT_S)

    def release(self) -> None:
        self._released.set()
