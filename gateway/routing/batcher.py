"""Embed concurrent requests together, off the event loop.

One worker thread runs the model (one core's worth of work, by design: the engine needs the
others). Requests queue for it; whenever it is free it takes everything waiting, up to
`max_batch`, as one batch: one hand-off to the thread and one wake-up of the event loop per
batch instead of per request (the embedder runs each text of a batch by itself, so a text's
vector never depends on its neighbours; see `OnnxEmbedder.embed`). Nobody waits for a batch
to fill: a lone request is embedded at once, and under load batches grow by themselves. The
queue is bounded: past `max_pending` waiting texts `Overloaded` is raised at once (the router
then serves the default route) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from gateway.metrics import Metrics
from gateway.routing.embedder import Embedder, Vectors


class Overloaded(RuntimeError):
    """Too many texts are waiting to be embedded."""


class EmbeddingBatcher:
    """Batches single-text embedding calls for one embedder."""

    def __init__(
        self, embedder: Embedder, metrics: Metrics, *, max_batch: int = 16, max_pending: int = 256
    ) -> None:
        self.embedder = embedder
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Vectors]]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._worker: asyncio.Task[None] | None = None

    async def embed_one(self, text: str) -> Vectors:
        """`text`'s unit vector (shape `(dimensions,)`)."""
        if self._queue.qsize() >= self._max_pending:
            raise Overloaded(f"{self._queue.qsize()} texts are waiting to be embedded")
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="embedding-batcher")
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def embed_many(self, texts: list[str]) -> Vectors:
        """Many texts in one call (building a table's index) on a thread of their own: the
        requests' worker keeps classifying meanwhile, with the table in use."""
        return await asyncio.to_thread(self.embedder.embed, texts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A caller that went away needs no answer.
            live = [(text, future) for text, future in batch if not future.done()]
            if not live:
                continue
            self._metrics.route_embed_batch.observe(len(live))
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self.embedder.embed, [text for text, _ in live]
                )
                if len(vectors) != len(live):
                    raise RuntimeError(f"the embedder gave {len(vectors)} rows for {len(live)}")
            except asyncio.CancelledError:
                _fail_all(live, Overloaded("the embedder was stopped"))
                raise
            except Exception as exc:  # the model failed: every caller hears why
                _fail_all(live, exc)
                continue
            for row, (_, future) in enumerate(live):
                if not future.done():
                    future.set_result(vectors[row])

    async def close(self) -> None:
        """Stop the worker and its thread."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        waiting: list[tuple[str, asyncio.Future[Vectors]]] = []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        _fail_all(waiting, Overloaded("the embedder was stopped"))
        self._executor.shutdown(wait=False, cancel_futures=True)


def _fail_all(callers: list[tuple[str, asyncio.Future[Vectors]]], exc: BaseException) -> None:
    for _, future in callers:
        if not future.done():
            future.set_exception(exc)
