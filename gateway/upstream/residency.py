"""Which adapter versions one replica holds, and loading one on demand.

A replica keeps at most `capacity` versions resident. A request for a version that is not
resident loads it; when the replica is full, the least recently used version that is
neither pinned (an active rollout needs it) nor serving a request is unloaded first.
Concurrent requests for the same missing version wait for one load, not one each. A version
that may no longer serve is unloaded at once, or when its last request is done. Loads and
unloads go through injected coroutines, so this knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from gateway.errors import NoRoom

Load = Callable[[str], Awaitable[None]]
Unload = Callable[[str], Awaitable[None]]
OnEvict = Callable[[str], None]


class Residency:
    """The resident set of one replica: bounded, least recently used out first."""

    def __init__(
        self,
        capacity: int,
        load: Load,
        unload: Unload,
        clock: Callable[[], float] = time.monotonic,
        on_evict: OnEvict | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._load = load
        self._unload = unload
        self._clock = clock
        self._on_evict = on_evict
        # name -> last use, least recent first.
        self._resident: OrderedDict[str, float] = OrderedDict()
        self._pinned: set[str] = set()
        self._busy: dict[str, int] = {}
        # Versions to unload when their last request is done, and those unloads under way.
        self._doomed: set[str] = set()
        self._unloading: set[asyncio.Task[bool]] = set()
        # One load or eviction at a time per replica (vLLM loads one at a time anyway).
        self._lock = asyncio.Lock()
        self.loads = 0
        self.evictions = 0

    @property
    def resident(self) -> list[str]:
        """Resident versions, least recently used first."""
        return list(self._resident)

    def holds(self, name: str) -> bool:
        """Whether `name` is resident (no list built: this is on the request path)."""
        return name in self._resident

    @property
    def changing(self) -> bool:
        """Whether a load, unload or eviction is under way (its lock is held)."""
        return self._lock.locked()

    @property
    def pinned(self) -> frozenset[str]:
        """Versions never evicted."""
        return frozenset(self._pinned)

    def pin(self, name: str) -> None:
        """Never evict `name` (it may still be loaded on demand)."""
        self._pinned.add(name)

    def unpin(self, name: str) -> None:
        """Let `name` be evicted again."""
        self._pinned.discard(name)

    def set_pins(self, names: set[str]) -> None:
        """Replace the pinned set."""
        self._pinned = set(names)

    def busy(self, name: str) -> int:
        """Requests using `name` right now."""
        return self._busy.get(name, 0)

    def forget(self) -> None:
        """The replica restarted: nothing is resident any more."""
        self._resident.clear()

    def discard(self, name: str) -> None:
        """The replica lost `name` (found out by a failed request): load it again when needed."""
        self._resident.pop(name, None)

    async def retire(self, name: str) -> bool:
        """Unload `name` now, or as soon as its last request is done; True if it is gone."""
        if await self.remove(name):
            return True
        self._doomed.add(name)
        return False

    async def remove(self, name: str) -> bool:
        """Unload `name` now unless a request uses it; True if it is gone."""
        self._doomed.discard(name)
        async with self._lock:
            if name not in self._resident:
                return True
            if self._busy.get(name):
                return False
            # Forgotten before the unload's await: a request arriving meanwhile loads it
            # again rather than use a version the engine is dropping.
            del self._resident[name]
            await self._unload(name)
            return True

    def mark_resident(self, name: str) -> None:
        """Record a version the replica already holds (found by a reconcile)."""
        self._resident[name] = self._clock()
        self._resident.move_to_end(name)

    async def ensure(self, name: str) -> bool:
        """Make `name` resident; True if this call loaded it."""
        # Wanted again (served again after all): keep it.
        self._doomed.discard(name)
        if self._touch(name):
            return False
        async with self._lock:
            if self._touch(name):
                return False
            while len(self._resident) >= self.capacity:
                await self._evict_one()
            await self._load(name)
            self.loads += 1
            self.mark_resident(name)
            return True

    async def acquire(self, name: str) -> bool:
        """Load `name` if needed and keep it from eviction until `release(name)`; True if
        this call loaded it."""
        self._busy[name] = self._busy.get(name, 0) + 1
        try:
            return await self.ensure(name)
        except BaseException:
            self.release(name)
            raise

    def release(self, name: str) -> None:
        """One request is done with `name` (the last one unloads a retired version)."""
        self._busy[name] -= 1
        if not self._busy[name]:
            del self._busy[name]
            if name in self._doomed:
                task = asyncio.get_running_loop().create_task(self.remove(name))
                self._unloading.add(task)
                task.add_done_callback(self._unloading.discard)

    @asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[None]:
        """Load `name` if needed and keep it from eviction while the block runs."""
        await self.acquire(name)
        try:
            yield
        finally:
            self.release(name)

    def _touch(self, name: str) -> bool:
        if name not in self._resident:
            return False
        self.mark_resident(name)
        return True

    async def _evict_one(self) -> None:
        victim = next(
            (n for n in self._resident if n not in self._pinned and not self._busy.get(n)), None
        )
        if victim is None:
            raise NoRoom(
                f"all {self.capacity} adapter slots hold pinned or busy versions; retry shortly"
            )
        # Forgotten first, as in `remove`.
        del self._resident[victim]
        await self._unload(victim)
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict(victim)
