"""A worker thread that yields the CPU to the request path: for work done beside it.

Scoring and the response log's writer run on the gateway's own cores. At the same nice
level as the event loop, a scoring batch takes its share of a busy core and the requests
wait for it; at nice 19 (Linux lets a thread lower its own priority) the scheduler gives
the event loop the core whenever it wants it, and the background work the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
NICE = 19


def _lower_priority() -> None:
    # Not on every platform (nor in every sandbox): the work still runs, at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


class LowPriorityThread:
    """One niced worker thread; `run` awaits a function called on it."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_lower_priority)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `fn(*args, **kwargs)` on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Stop the thread once its current call returns."""
        self._executor.shutdown(wait=False, cancel_futures=True)
