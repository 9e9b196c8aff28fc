"""The embedding batcher: batching under load, the bounded queue, failures, cancellation.

The embedder is a fake that blocks its thread (`time.sleep`, or a gate the test opens) and
returns a one-hot vector per text, so every caller's answer shows whose text it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from gateway.metrics import Metrics
from gateway.routing.batcher import EmbeddingBatcher, Overloaded
from gateway.routing.embedder import DIMENSIONS, Vectors

TIMEOUT = 2.0


def vector_for(text: str) -> Vectors:
    """`t<n>` -> the n-th unit vector; anything else -> a hashed one-hot vector."""
    row = np.zeros(DIMENSIONS, np.float32)
    digits = text[1:]
    index = int(digits) if text.startswith("t") and digits.isdigit() else zlib.crc32(text.encode())
    row[index % DIMENSIONS] = 1.0
    return row


class FakeEmbedder:
    """Records its calls and threads; blocks for `delay` and/or until `gate` opens."""

    def __init__(self, *, delay: float = 0.0, gated: bool = False) -> None:
        self.delay = delay
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.busy = threading.Event()
        self.calls: list[list[str]] = []
        self.threads: list[threading.Thread] = []
        self.fail_on: str | None = None

    def embed(self, texts: list[str]) -> Vectors:
        self.calls.append(list(texts))
        self.threads.append(threading.current_thread())
        self.busy.set()
        try:
            self.gate.wait(TIMEOUT)
            if self.delay:
                time.sleep(self.delay)
            if self.fail_on is not None and any(self.fail_on in t for t in texts):
                raise ValueError(f"the model broke on {self.fail_on!r}")
            return np.stack([vector_for(t) for t in texts]).astype(np.float32)
        finally:
            self.busy.clear()

    def release(self) -> None:
        self.gate.set()


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running(
    embedder: FakeEmbedder, metrics: Metrics | None = None, **options: int
) -> AsyncIterator[EmbeddingBatcher]:
    batcher = EmbeddingBatcher(embedder, metrics or Metrics(), **options)
    try:
        yield batcher
    finally:
        embedder.release()
        await batcher.close()


async def start_busy(batcher: EmbeddingBatcher, embedder: FakeEmbedder) -> asyncio.Task[Vectors]:
    """`t0` being embedded (the worker is busy until the gate opens or the delay ends)."""
    first = asyncio.create_task(batcher.embed_one("t0"))
    await wait_until(embedder.busy.is_set)
    return first


def assert_own(vector: Vectors, text: str) -> None:
    assert vector.shape == (DIMENSIONS,)
    np.testing.assert_array_equal(vector, vector_for(text))


def test_fake_vectors_identify_their_texts() -> None:
    texts = [f"t{i}" for i in range(20)]
    matrix = np.stack([vector_for(t) for t in texts])
    assert np.linalg.matrix_rank(matrix) == len(texts)


async def test_a_lone_request_is_embedded_at_once_alone() -> None:
    embedder = FakeEmbedder()
    async with running(embedder, max_batch=16) as batcher:
        started = time.perf_counter()
        vector = await batcher.embed_one("t7")
        elapsed = time.perf_counter() - started
    assert embedder.calls == [["t7"]]
    assert_own(vector, "t7")
    assert elapsed < 0.2


async def test_requests_arriving_while_busy_are_batched_up_to_max_batch() -> None:
    embedder = FakeEmbedder(delay=0.05)
    async with running(embedder, max_batch=4) as batcher:
        first = await start_busy(batcher, embedder)
        texts = [f"t{i}" for i in range(1, 11)]
        vectors = await asyncio.gather(*(batcher.embed_one(t) for t in texts))
        assert_own(await first, "t0")
    for text, vector in zip(texts, vectors, strict=True):
        assert_own(vector, text)
    sizes = [len(call) for call in embedder.calls]
    assert embedder.calls[0] == ["t0"]
    assert len(embedder.calls) < len(texts)
    assert max(sizes) <= 4
    assert sizes == [1, 4, 4, 2]
    assert sorted(t for call in embedder.calls[1:] for t in call) == sorted(texts)


async def test_the_event_loop_runs_while_a_batch_is_embedded() -> None:
    embedder = FakeEmbedder(delay=0.1)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    async with running(embedder) as batcher:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        vector = await batcher.embed_one("t3")
        during = ticks - before
        stop.set()
        await task
    assert_own(vector, "t3")
    assert during >= 5, during  # ~20 ticks fit in 100 ms; a blocked loop would give 0 or 1


async def test_too_many_waiting_texts_are_refused_at_once() -> None:
    embedder = FakeEmbedder(gated=True)
    async with running(embedder, max_pending=3) as batcher:
        first = await start_busy(batcher, embedder)
        waiting = [asyncio.create_task(batcher.embed_one(f"t{i}")) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="3 texts are waiting"):
            await batcher.embed_one("t9")
        assert not any(task.done() for task in waiting)
        embedder.release()
        assert_own(await first, "t0")
        for i, task in zip((1, 2, 3), waiting, strict=True):
            assert_own(await task, f"t{i}")
        # With the queue drained, requests are accepted again.
        assert_own(await batcher.embed_one("t9"), "t9")
    assert embedder.calls == [["t0"], ["t1", "t2", "t3"], ["t9"]]


async def test_an_embedder_failure_reaches_every_caller_of_its_batch() -> None:
    embedder = FakeEmbedder(gated=True)
    embedder.fail_on = "boom"
    async with running(embedder) as batcher:
        first = await start_busy(batcher, embedder)
        doomed = [asyncio.create_task(batcher.embed_one(text)) for text in ("t1", "boom", "t2")]
        await asyncio.sleep(0)
        embedder.release()
        assert_own(await first, "t0")
        outcomes = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes), outcomes
        assert all("the model broke on 'boom'" in str(o) for o in outcomes)
        # The worker survives: the next requests are answered.
        after = await asyncio.gather(batcher.embed_one("t4"), batcher.embed_one("t5"))
    assert_own(after[0], "t4")
    assert_own(after[1], "t5")
    assert embedder.calls[1] == ["t1", "boom", "t2"]
    assert embedder.calls[-1] == ["t4", "t5"]


async def test_a_lone_failure_does_not_stop_the_worker() -> None:
    embedder = FakeEmbedder()
    embedder.fail_on = "boom"
    async with running(embedder) as batcher:
        with pytest.raises(ValueError, match="boom"):
            await batcher.embed_one("boom")
        assert_own(await batcher.embed_one("t1"), "t1")


async def test_cancelled_callers_do_not_break_the_others() -> None:
    embedder = FakeEmbedder(gated=True)
    metrics = Metrics()
    async with running(embedder, metrics) as batcher:
        first = await start_busy(batcher, embedder)
        queued = {t: asyncio.create_task(batcher.embed_one(t)) for t in ("t1", "t2", "t3")}
        await asyncio.sleep(0)
        first.cancel()  # its batch is being embedded
        queued["t2"].cancel()  # still waiting in the queue
        await asyncio.sleep(0)
        embedder.release()
        assert_own(await queued["t1"], "t1")
        assert_own(await queued["t3"], "t3")
        assert first.cancelled() and queued["t2"].cancelled()
        assert_own(await batcher.embed_one("t4"), "t4")
    # The cancelled waiter's text was never embedded.
    assert embedder.calls == [["t0"], ["t1", "t3"], ["t4"]]
    assert metrics.registry.get_sample_value("gateway_route_embed_batch_size_sum") == 4


async def test_a_batch_of_only_cancelled_callers_is_skipped() -> None:
    embedder = FakeEmbedder(gated=True)
    async with running(embedder) as batcher:
        first = await start_busy(batcher, embedder)
        gone = asyncio.create_task(batcher.embed_one("t1"))
        await asyncio.sleep(0)
        gone.cancel()
        embedder.release()
        assert_own(await first, "t0")
        assert_own(await batcher.embed_one("t2"), "t2")
    assert gone.cancelled()
    assert embedder.calls == [["t0"], ["t2"]]


async def test_embed_many_runs_beside_a_busy_request_worker() -> None:
    embedder = FakeEmbedder(gated=True)
    async with running(embedder) as batcher:
        request = await start_busy(batcher, embedder)
        # The request worker is stuck in a call; an index build still runs.
        embedder.gate.set()
        matrix = await asyncio.wait_for(batcher.embed_many(["t1", "t2", "t3"]), TIMEOUT)
        assert_own(await request, "t0")
    assert matrix.shape == (3, DIMENSIONS)
    for row, text in zip(matrix, ["t1", "t2", "t3"], strict=True):
        assert_own(row, text)
    assert ["t1", "t2", "t3"] in embedder.calls
    main = threading.current_thread()
    assert all(thread is not main for thread in embedder.threads)
    worker, builder = (
        embedder.threads[0],
        embedder.threads[embedder.calls.index(["t1", "t2", "t3"])],
    )
    assert worker.name.startswith("embed") and builder is not worker


async def test_batch_sizes_are_recorded() -> None:
    embedder = FakeEmbedder(gated=True)
    metrics = Metrics()

    def sample(suffix: str, labels: dict[str, str] | None = None) -> float | None:
        name = f"gateway_route_embed_batch_size_{suffix}"
        return metrics.registry.get_sample_value(name, labels)

    assert sample("count") == 0
    async with running(embedder, metrics) as batcher:
        first = await start_busy(batcher, embedder)
        more = [asyncio.create_task(batcher.embed_one(f"t{i}")) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        embedder.release()
        await first
        await asyncio.gather(*more)
        await batcher.embed_many(["t8", "t9"])  # an index build is not a request batch
    assert sample("count") == 2
    assert sample("sum") == 4
    assert sample("bucket", {"le": "1.0"}) == 1
    assert sample("bucket", {"le": "2.0"}) == 1
    assert sample("bucket", {"le": "4.0"}) == 2


async def test_close_stops_the_worker_and_its_thread() -> None:
    embedder = FakeEmbedder()
    batcher = EmbeddingBatcher(embedder, Metrics())
    assert_own(await batcher.embed_one("t1"), "t1")
    [worker] = [t for t in asyncio.all_tasks() if t.get_name() == "embedding-batcher"]
    assert not worker.done()
    [thread] = set(embedder.threads)
    await batcher.close()
    assert worker.cancelled()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "embedding-batcher"]


async def test_close_without_use_is_harmless() -> None:
    embedder = FakeEmbedder()
    batcher = EmbeddingBatcher(embedder, Metrics())
    await batcher.close()
    assert embedder.calls == []


async def test_close_answers_every_waiting_caller() -> None:
    embedder = FakeEmbedder(gated=True)
    batcher = EmbeddingBatcher(embedder, Metrics())
    in_flight = await start_busy(batcher, embedder)
    queued = asyncio.create_task(batcher.embed_one("t2"))
    await wait_until(lambda: batcher._queue.qsize() == 1)
    await batcher.close()
    embedder.release()
    for task in (in_flight, queued):
        with pytest.raises(Overloaded):
            await asyncio.wait_for(task, TIMEOUT)


class ShortEmbedder(FakeEmbedder):
    """Returns one row too few (a broken model)."""

    def embed(self, texts: list[str]) -> Vectors:
        return super().embed(texts)[:-1]


async def test_an_embedder_giving_too_few_rows_fails_its_batch_and_keeps_working() -> None:
    embedder = ShortEmbedder(gated=True)
    async with running(embedder) as batcher:
        first = await start_busy(batcher, embedder)
        others = [asyncio.create_task(batcher.embed_one(f"t{i}")) for i in (2, 3)]
        await wait_until(lambda: batcher._queue.qsize() == 2)
        embedder.release()
        for task in (first, *others):
            with pytest.raises(RuntimeError, match="rows for"):
                await asyncio.wait_for(task, TIMEOUT)
        assert batcher._worker is not None and not batcher._worker.done()
