"""Rollouts at run time: commands, the live view the request path reads, and bookkeeping.

`RolloutManager` starts rollouts (after loading, pinning and warming the candidate on every
replica), applies operators' commands through the state machine, and keeps an in-memory
view of the active rollouts that each request consults without touching the database. A
command rebuilds this replica's view from the row it has just written; the registry
follower (`gateway.registry.changes`) rebuilds it after every change anywhere, so every
gateway replica follows the same rollouts (within milliseconds on PostgreSQL, within the
registry poll on SQLite); assignment is a pure hash, so they agree on who is on the canary.
A promotion moves the route's stable version: only then does the manager ask the lifecycle
for a catalogue refresh. Request counts and shadow pairs are written every `flush_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gateway.background.tasks import cancel_and_wait
from gateway.catalog import CatalogView, Target, engine_name
from gateway.config import RolloutSettings
from gateway.errors import Conflict, RolloutNotFound
from gateway.lifecycle import AdapterLifecycle, VersionView
from gateway.metrics import Metrics
from gateway.registry.changes import LocalChanges
from gateway.registry.rollouts import SHADOW_STEP, Change, NewRollout, RolloutStore, Samples
from gateway.registry.schema import (
    AuditEvent,
    RolloutRow,
    RolloutStage,
    ShadowPairRow,
    VersionState,
)
from gateway.rollout import assign as sticky
from gateway.rollout.assign import Variant, subject_of
from gateway.rollout.machine import Command, decide, gate
from gateway.rollout.plan import RolloutPlan, parse_plan
from gateway.rollout.shadow import PairHalf, ShadowJob, ShadowRunner
from gateway.rollout.warmup import CandidateWarmer
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.proxy import EngineProxy

log = logging.getLogger(__name__)
STAGES = tuple(RolloutStage)
# (rollout id, stage, step, paused) a command was decided on.
Expected = tuple[int, RolloutStage, int, bool]
# Told of the shadow pairs of a route just stored (the quality scorers).
PairListener = Callable[[list[ShadowPairRow], str], None]


@dataclass(frozen=True)
class LiveRollout:
    """An active rollout as the request path sees it."""

    id: int
    route: str
    stable_version: int
    candidate_version: int
    stage: RolloutStage
    step: int
    weight: float
    paused: bool
    plan: RolloutPlan

    @property
    def canary_buckets(self) -> int:
        """Buckets [0, n) are on the canary now."""
        if self.stage != RolloutStage.CANARY:
            return 0
        return self.plan.canary[self.step].buckets

    @classmethod
    def of(cls, row: RolloutRow) -> LiveRollout:
        return cls(
            id=row.id,
            route=row.route,
            stable_version=row.stable_version,
            candidate_version=row.candidate_version,
            stage=row.stage,
            step=row.step,
            weight=row.weight,
            paused=row.paused,
            plan=RolloutPlan.model_validate(row.plan),
        )


@dataclass(frozen=True)
class Assignment:
    """Which variant serves a request of a route under rollout, and its shadow copy."""

    rollout_id: int
    variant: Variant
    target: Target
    shadow: ShadowJob | None = None


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout with its counts, what its step still lacks and its latest decisions."""

    row: RolloutRow
    samples: Samples
    missing: list[str]
    events: list[AuditEvent]
    warm_here: bool


class RolloutManager:
    """Starts and steers rollouts; answers the request path's questions about them."""

    def __init__(
        self,
        store: RolloutStore,
        lifecycle: AdapterLifecycle,
        catalogs: CatalogView,
        pool: UpstreamPool,
        proxy: EngineProxy,
        metrics: Metrics,
        settings: RolloutSettings,
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._catalogs = catalogs
        self._pool = pool
        self._proxy = proxy
        self._metrics = metrics
        self._settings = settings
        self.shadow = ShadowRunner(pool, proxy, metrics, limit=settings.shadow_concurrency)
        self._live: dict[str, LiveRollout] = {}
        # This replica's own commands taken into the live view: a refresh that read before
        # one reads again.
        self._local = LocalChanges()
        self._warmer = CandidateWarmer(pool, proxy, settings)
        self._pending: Counter[tuple[int, int, str]] = Counter()
        self._flushing = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()
        self._pair_listeners: list[PairListener] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Read the active rollouts and start the bookkeeping loop."""
        self._lifecycle.protect(self._in_rollout)
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="rollout-bookkeeping")

    async def stop(self) -> None:
        """Stop the loop, cancel shadow copies still running and write what is pending."""
        await cancel_and_wait(self._task)
        self._task = None
        self._warmer.stop()
        await self.shadow.close()
        with contextlib.suppress(Exception):
            await self.flush()

    async def refresh(self) -> None:
        """Rebuild the live view from the registry's active rollouts (after any change)."""
        rows = await self._local.read(self._store.active)
        live = {row.route: LiveRollout.of(row) for row in rows}
        ended = set(self._live) - set(live)
        self._live = live
        for route in ended:
            latest = await asyncio.to_thread(self._store.latest, route)
            self._show(route, latest.stage if latest else None, 0.0)
        for rollout in live.values():
            self._show(rollout.route, rollout.stage, rollout.weight)
        self._warmer.warm_missing(self._live.values())

    def _install(self, row: RolloutRow) -> None:
        """Take one rollout's new state into the live view (this replica's own command)."""
        self._local.note()
        if row.active_route is None:
            # 0% at once here; the other replicas follow at the registry change.
            self._live.pop(row.route, None)
            self._show(row.route, row.stage, 0.0)
        else:
            self._live[row.route] = LiveRollout.of(row)
            self._show(row.route, row.stage, row.weight)

    def _show(self, route: str, stage: RolloutStage | None, weight: float) -> None:
        for each in STAGES:
            self._metrics.rollout_stage.labels(route, each.value).set(1 if each == stage else 0)
        self._metrics.rollout_weight.labels(route).set(weight)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_s)
            try:
                await self.flush()
                self._warmer.warm_missing(self._live.values())
            except Exception:
                log.exception("rollout bookkeeping failed; it is tried again at the next tick")

    async def flush(self) -> None:
        """Write pending request counts and shadow pairs to the registry. A flush waits for
        one in progress, so whoever flushes before reading reads everything counted."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        pairs = self.shadow.take_pairs()
        counts = self._pending
        self._pending = Counter()
        for pair in pairs:
            if pair.shadow_status == 200:
                counts[(pair.rollout_id, SHADOW_STEP, "shadow")] += 1
        if not counts and not pairs:
            return
        try:
            if counts:
                await asyncio.to_thread(self._store.add_samples, dict(counts))
            if pairs:
                limit = self._settings.max_pairs_per_rollout
                over = await asyncio.to_thread(self._store.add_pairs, pairs, limit=limit)
                routes = {r.id: r.route for r in self._live.values()}
                for pair in over:
                    route = routes.get(pair.rollout_id, "-")
                    self._metrics.shadow_requests.labels(route, "unrecorded").inc()
                self._tell_pairs(pairs, over, routes)
        except Exception:
            self._pending.update(counts)
            raise

    def listen_pairs(self, listener: PairListener) -> None:
        """Call `listener(pairs, route)` with the shadow pairs of a route once stored."""
        self._pair_listeners.append(listener)

    def _tell_pairs(
        self, pairs: list[ShadowPairRow], over: list[ShadowPairRow], routes: dict[int, str]
    ) -> None:
        dropped = {id(pair) for pair in over}
        by_route: dict[str, list[ShadowPairRow]] = {}
        for pair in pairs:
            route = routes.get(pair.rollout_id)
            if id(pair) not in dropped and route is not None:
                by_route.setdefault(route, []).append(pair)
        for route, stored in by_route.items():
            for listener in self._pair_listeners:
                try:
                    listener(stored, route)
                except Exception:
                    log.exception("a shadow pair listener failed")

    # -- the request path ----------------------------------------------------------------

    def assign(
        self,
        target: Target,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        key_owner: str | None,
        endpoint: str,
        request_id: str,
    ) -> Assignment | None:
        """The variant of a request that named a route (not `name@N`), if it is under rollout."""
        rollout = self._live.get(target.route)
        if rollout is None or not self._warmer.is_warm(rollout.id):
            return None
        adapter = target.adapter
        if adapter is None or adapter.version != rollout.stable_version:
            return None
        candidate = self._catalogs.current.version(rollout.route, rollout.candidate_version)
        if candidate is None:
            return None
        variant: Variant = "stable"
        shadow = None
        if rollout.stage == RolloutStage.CANARY:
            subject = subject_of(payload, headers, key_owner)
            variant = sticky.variant(rollout.id, subject, rollout.canary_buckets)
            if variant == "canary":
                target = Target(candidate.engine_name, candidate, route=target.route)
        elif not rollout.paused and self._random.random() < rollout.plan.shadow.sample_rate:
            shadow = ShadowJob(
                rollout_id=rollout.id,
                route=rollout.route,
                stable_version=rollout.stable_version,
                candidate=candidate,
                endpoint=endpoint,
                payload=dict(payload),
                request_id=request_id,
            )
        self._pending[(rollout.id, rollout.step, variant)] += 1
        self._metrics.rollout_requests.labels(rollout.route, variant).inc()
        return Assignment(rollout.id, variant, target, shadow)

    def warm_here(self, rollout_id: int) -> bool:
        """Whether this gateway replica has warmed the rollout's candidate up."""
        return self._warmer.is_warm(rollout_id)

    def send_shadow(self, job: ShadowJob) -> PairHalf | None:
        """Start the shadow copy of a request whose primary was dispatched (None: dropped)."""
        return self.shadow.submit(job)

    # -- commands ------------------------------------------------------------------------

    async def begin(
        self, route: str, version: int, raw_plan: Any, *, actor: str, reason: str
    ) -> RolloutStatus:
        """Start a rollout of `route@version`: check, load, pin, warm up, then record it."""
        plan = parse_plan(raw_plan)
        async with self._lock(route):
            row = (await self._lifecycle.version(route, version)).row
            if row.state not in (VersionState.REGISTERED, VersionState.LOADING, VersionState.READY):
                raise Conflict(
                    f"{route}@{version} is {row.state.value}; only a servable version can be "
                    "rolled out",
                    param="version",
                    code="version_not_ready",
                )
            current = self._live.get(route) or await self._active_in_registry(route)
            if current is not None:
                raise Conflict(
                    f"route {route!r} has an active rollout ({current.id}, "
                    f"{route}@{current.candidate_version}); finish it first",
                    param="route",
                    code="rollout_active",
                )
            stable = self._catalogs.current.resolve(route).adapter
            if stable is None or stable.version == version:
                raise Conflict(
                    f"{route}@{version} is the route's stable version already",
                    param="version",
                    code="already_stable",
                )
            pinned_here = not row.pinned
            why = f"rollout of {route}@{version}"
            await self._lifecycle.load(route, version, pin=True, actor=actor, reason=why)
            try:
                await self._warmer.warm_up(engine_name(route, version), f"warmup-{route}-{version}")
                created = await asyncio.to_thread(
                    self._store.create,
                    NewRollout(route, stable.version, version, plan.model_dump(), pinned_here),
                    actor=actor,
                    reason=reason,
                )
            except BaseException:
                if pinned_here and await self._active_in_registry(route) is None:
                    await self._lifecycle.set_pinned(
                        route, version, False, actor=actor, reason="the rollout did not start"
                    )
                raise
            self._warmer.mark_warm(created.id)
            self._install(created)
        return await self.status(route)

    async def command(
        self,
        route: str,
        command: Command,
        *,
        actor: str,
        reason: str,
        force: bool = False,
        expect: Expected | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> RolloutStatus:
        """Apply an operator's (or the analysis's) command to the route's active rollout.

        `expect`: the rollout, stage, step and pause the caller decided on; when the rollout
        moved since (an operator came first), the command is refused (409 `rollout_moved`).
        `detail` joins the audit event (the verdict behind an automatic action)."""
        async with self._lock(route):
            current = await self._active_in_registry(route)
            if current is None:
                raise RolloutNotFound(f"route {route!r} has no active rollout", param="route")
            await self.flush()
            plan = RolloutPlan.model_validate(current.plan)

            def decider(r: RolloutRow, samples: Samples, now: datetime) -> Change:
                if expect is not None and expect != (r.id, r.stage, r.step, r.paused):
                    held = " (paused)" if r.paused else ""
                    raise Conflict(
                        f"rollout {r.id} of {route} moved to {r.stage.value} step {r.step}"
                        f"{held} since the decision",
                        code="rollout_moved",
                    )
                change = decide(r, command, plan, samples, now, force=force)
                if detail:
                    change = replace(change, detail={**change.detail, **detail})
                return change

            row = await asyncio.to_thread(
                self._store.apply, current.id, command.value, decider, actor=actor, reason=reason
            )
            if row.stage == RolloutStage.PROMOTED:
                # The stable pointer moved: the name serves the candidate before the rollout
                # leaves the live view, so its canary users never go back to the old version.
                await self._lifecycle.refresh()
            self._install(row)
        return await self.status(route)

    async def make_stable(self, name: str, version: int, *, actor: str, reason: str) -> VersionView:
        """Make a version its name's stable one without a rollout (refused during one)."""
        async with self._lock(name):
            current = await self._active_in_registry(name)
            if current is not None:
                raise Conflict(
                    f"route {name!r} has an active rollout ({current.id}); promote or roll it "
                    "back instead",
                    param="name",
                    code="rollout_active",
                )
            return await self._lifecycle.set_stable(name, version, actor=actor, reason=reason)

    async def status(self, route: str) -> RolloutStatus:
        """The route's active rollout, or its latest one."""
        with contextlib.suppress(Exception):
            await self.flush()
        row = await asyncio.to_thread(self._store.latest, route)
        if row is None:
            raise RolloutNotFound(f"route {route!r} has had no rollout", param="route")
        samples = await asyncio.to_thread(self._store.samples, row.id)
        events = await asyncio.to_thread(self._store.events, row)
        missing: list[str] = []
        if row.active_route is not None:
            plan = RolloutPlan.model_validate(row.plan)
            missing = gate(row, plan, samples, datetime.now(UTC))
        return RolloutStatus(row, samples, missing, events, self.warm_here(row.id))

    async def active_rows(self) -> Sequence[RolloutRow]:
        """Every active rollout, read from the registry now."""
        return await asyncio.to_thread(self._store.active)

    async def note(
        self, rollout_id: int, action: str, *, actor: str, reason: str, detail: dict[str, Any]
    ) -> None:
        """Record something about a rollout that changes nothing in it (an alarm)."""
        await asyncio.to_thread(
            self._store.note, rollout_id, action, actor=actor, reason=reason, detail=detail
        )

    async def samples(self, rollout_id: int) -> Samples:
        """A rollout's request counts per (step, variant), pending ones written first."""
        with contextlib.suppress(Exception):
            await self.flush()
        return await asyncio.to_thread(self._store.samples, rollout_id)

    async def get(self, rollout_id: int) -> RolloutRow:
        """One rollout by id."""
        row = await asyncio.to_thread(self._store.get, rollout_id)
        if row is None:
            raise RolloutNotFound(f"no rollout {rollout_id}", param="rollout")
        return row

    async def recent(self, limit: int) -> list[RolloutStatus]:
        """The newest rollouts, active or ended, newest first, with their sample counts."""
        rows = await asyncio.to_thread(self._store.recent, limit)
        samples = await asyncio.to_thread(self._store.samples_of, [row.id for row in rows])
        return [
            RolloutStatus(row, samples.get(row.id, {}), [], [], self.warm_here(row.id))
            for row in rows
        ]

    async def shadow_pairs(self, route: str, *, after: int, limit: int) -> Sequence[ShadowPairRow]:
        """(primary, shadow) answers of the route's active or latest rollout, oldest first."""
        row = await asyncio.to_thread(self._store.latest, route)
        if row is None:
            raise RolloutNotFound(f"route {route!r} has had no rollout", param="route")
        return await asyncio.to_thread(self._store.pairs, row.id, after=after, limit=limit)

    def variants(self, route: str, subjects: Sequence[str]) -> tuple[LiveRollout, list[Variant]]:
        """What each subject gets from the route's rollout right now (for checks and tools)."""
        rollout = self._live.get(route)
        if rollout is None:
            raise RolloutNotFound(f"route {route!r} has no active rollout", param="route")
        buckets = rollout.canary_buckets
        return rollout, [
            sticky.variant(rollout.id, subject_of({"user": s}, {}, None), buckets) for s in subjects
        ]

    # -- helpers -------------------------------------------------------------------------

    def _lock(self, route: str) -> asyncio.Lock:
        return self._locks.setdefault(route, asyncio.Lock())

    async def _active_in_registry(self, route: str) -> RolloutRow | None:
        row = await asyncio.to_thread(self._store.latest, route)
        return row if row is not None and row.active_route is not None else None

    def _in_rollout(self, name: str, version: int) -> int | None:
        """The active rollout that needs `name@version` (stable or candidate), if any."""
        rollout = self._live.get(name)
        if rollout and version in (rollout.stable_version, rollout.candidate_version):
            return rollout.id
        return None
