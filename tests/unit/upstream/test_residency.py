"""The resident set of one replica: least recently used out first, pinned and busy never."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import NoRoom
from gateway.upstream.residency import Residency


class FakeEngine:
    """Records loads and unloads; a load takes a moment, like vLLM's."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    async def load(self, name: str) -> None:
        self.calls.append(f"load {name}")
        await asyncio.sleep(0.01)
        if name in self.fail:
            raise RuntimeError(f"vLLM refused {name}")

    async def unload(self, name: str) -> None:
        self.calls.append(f"unload {name}")


def _residency(capacity: int = 2, engine: FakeEngine | None = None) -> tuple[Residency, FakeEngine]:
    engine = engine or FakeEngine()
    return Residency(capacity, engine.load, engine.unload), engine


async def test_a_third_version_evicts_the_least_recently_used() -> None:
    residency, engine = _residency()
    await residency.ensure("a--v1")
    await residency.ensure("b--v1")
    await residency.ensure("a--v1")  # a is now the most recently used

    assert await residency.ensure("c--v1")

    assert residency.resident == ["a--v1", "c--v1"]
    assert engine.calls == ["load a--v1", "load b--v1", "unload b--v1", "load c--v1"]
    assert (residency.loads, residency.evictions) == (3, 1)


async def test_a_pinned_version_is_never_evicted() -> None:
    residency, engine = _residency()
    await residency.ensure("a--v1")
    residency.pin("a--v1")
    await residency.ensure("b--v1")

    await residency.ensure("c--v1")
    await residency.ensure("d--v1")

    assert "a--v1" in residency.resident
    assert "unload a--v1" not in engine.calls


async def test_a_busy_version_is_not_evicted_while_it_serves() -> None:
    residency, engine = _residency(capacity=1)
    async with residency.using("a--v1"):
        with pytest.raises(NoRoom):
            await residency.ensure("b--v1")
    assert residency.resident == ["a--v1"]

    await residency.ensure("b--v1")

    assert residency.resident == ["b--v1"]
    assert engine.calls == ["load a--v1", "unload a--v1", "load b--v1"]


async def test_concurrent_requests_for_a_missing_version_load_it_once() -> None:
    residency, engine = _residency()

    loaded = await asyncio.gather(*(residency.ensure("a--v1") for _ in range(10)))

    assert engine.calls == ["load a--v1"]
    assert sum(loaded) == 1


async def test_everything_pinned_leaves_no_room_and_changes_nothing() -> None:
    residency, engine = _residency()
    for name in ("a--v1", "b--v1"):
        residency.pin(name)
        await residency.ensure(name)

    with pytest.raises(NoRoom) as refused:
        await residency.ensure("c--v1")

    assert refused.value.status_code == 503
    assert residency.resident == ["a--v1", "b--v1"]
    assert "load c--v1" not in engine.calls


async def test_a_failed_load_leaves_the_version_absent() -> None:
    residency, engine = _residency(engine=FakeEngine(fail={"bad--v1"}))

    with pytest.raises(RuntimeError):
        await residency.ensure("bad--v1")

    assert residency.resident == []
    assert residency.loads == 0
    assert engine.calls == ["load bad--v1"]


async def test_after_a_replica_restart_versions_load_again() -> None:
    residency, engine = _residency()
    await residency.ensure("a--v1")

    residency.forget()
    await residency.ensure("a--v1")

    assert engine.calls == ["load a--v1", "load a--v1"]


async def test_versions_found_by_a_reconcile_count_as_resident() -> None:
    residency, engine = _residency()
    residency.mark_resident("a--v1")

    assert not await residency.ensure("a--v1")
    assert engine.calls == []


def test_capacity_must_be_positive() -> None:
    engine = FakeEngine()
    with pytest.raises(ValueError):
        Residency(0, engine.load, engine.unload)


async def test_a_retired_version_in_use_is_unloaded_when_its_last_request_is_done() -> None:
    residency, engine = _residency()
    await residency.acquire("a--v1")
    await residency.acquire("a--v1")
    await residency.ensure("b--v1")

    assert await residency.retire("b--v1") is True
    assert await residency.retire("a--v1") is False
    residency.release("a--v1")
    await asyncio.sleep(0)
    kept_while_one_request_runs = "a--v1" in residency.resident
    residency.release("a--v1")
    for _ in range(10):
        await asyncio.sleep(0)

    assert kept_while_one_request_runs
    assert residency.resident == []
    assert engine.calls == ["load a--v1", "load b--v1", "unload b--v1", "unload a--v1"]


async def test_a_retired_version_wanted_again_before_its_requests_end_is_kept() -> None:
    residency, engine = _residency()
    await residency.acquire("a--v1")
    assert await residency.retire("a--v1") is False

    await residency.ensure("a--v1")
    residency.release("a--v1")
    for _ in range(10):
        await asyncio.sleep(0)

    assert residency.resident == ["a--v1"]
    assert "unload a--v1" not in engine.calls
