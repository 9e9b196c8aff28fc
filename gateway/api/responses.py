"""A lean streaming response for relaying engine streams.

Starlette's StreamingResponse runs an anyio task group with two tasks per response. Here a
single watcher task waits for the client's disconnect, and the relay checks it before each
send: with an event every few milliseconds that is soon enough, and cheaper.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class RelayResponse(Response):
    """Send each chunk of an async byte iterator as soon as it arrives."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status_code: int,
        media_type: str,
        headers: Mapping[str, str],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = chunks
        # Runs after the relay whether or not it started (a generator that never started
        # runs no `finally` of its own).
        self.on_close = on_close
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.chunks:
                if watcher.done():
                    # The client went away: closing the engine stream stops the generation.
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return
        finally:
            watcher.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                if self.on_close is not None:
                    self.on_close()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
