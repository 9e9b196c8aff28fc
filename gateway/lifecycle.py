"""Adapter versions from registration to retirement: the registry and the replicas in step.

`AdapterLifecycle` validates and registers versions, loads, unloads, pins, retires and
deletes them, answers the admin API's questions about them, and keeps an in-memory snapshot
of the registry (the servable versions, the catalogue clients resolve `model` against, the
pins) that the request path reads without touching the database. A change made here
rebuilds the snapshot at once; a change made anywhere else (another gateway replica, a
rollout's promotion) reaches it through the registry follower (`gateway.registry.changes`).

It is also the pool's `AdapterSource`: it checks files again before each load and records
each load's outcome. Those hooks run inside a replica's residency lock, so they record the
state and *request* a refresh; the follower runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.catalog import (
    AdapterVersion,
    CatalogView,
    ModelCatalog,
    engine_name,
    scan_adapter_root,
)
from gateway.errors import (
    AdapterLoadFailed,
    Conflict,
    GatewayError,
    InvalidRequest,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.registry.changes import ChangeFeed, LocalChanges
from gateway.registry.schema import Adapter, AdapterVersionRow, AuditEvent, VersionState
from gateway.registry.store import SERVABLE, Registry
from gateway.registry.validation import (
    CONTENT_FILES,
    ServedBase,
    check_registration,
    confine,
    content_sha256,
)
from gateway.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)
SYSTEM = "system"


@dataclass(frozen=True)
class RegisterCommand:
    """A registration as the admin API received it."""

    name: str
    path: str
    sha256: str | None = None
    base_model: str | None = None
    manifest: Mapping[str, Any] | None = None
    reason: str = ""
    serve_first: bool = True


@dataclass(frozen=True)
class VersionView:
    """A version as the admin API shows it: its registry row and the replicas holding it."""

    row: AdapterVersionRow
    resident_on: list[str]
    # A registration that found the same files registered already did not create this one.
    created: bool = False

    @property
    def name(self) -> str:
        """The adapter's name."""
        return self.row.adapter.name


@dataclass(frozen=True)
class AdapterView:
    """An adapter with every version."""

    name: str
    created_at: datetime
    versions: list[VersionView]


class AdapterLifecycle:
    """Registers, loads, pins, retires and deletes adapter versions."""

    def __init__(
        self,
        registry: Registry,
        pool: UpstreamPool,
        changes: ChangeFeed,
        *,
        adapter_root: Path,
        base: ServedBase,
        max_rank: int,
        metrics: Metrics,
        catalogs: CatalogView,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._changes = changes
        self._root = adapter_root
        self._base = base
        self._max_rank = max_rank
        self._metrics = metrics
        self._catalogs = catalogs
        self._servable: dict[str, AdapterVersion] = {}
        self._stable: dict[str, int | None] = {}
        self._states: dict[str, VersionState] = {}
        # Versions marked failed here: a refresh that read before one reads again.
        self._local = LocalChanges()
        self._pinned: set[str] = set()
        self._wanted: list[str] = []
        self._verified: dict[str, tuple[str, tuple[tuple[int, int, int, int], ...]]] = {}
        self._guard: Callable[[str, int], int | None] = lambda name, version: None
        # The pool asks this lifecycle what to load, and tells it what happened.
        pool.source = self

    def protect(self, guard: Callable[[str, int], int | None]) -> None:
        """`guard(name, version)` names the rollout that needs a version (it is not unloaded,
        unpinned, retired or deleted while that rollout is active)."""
        self._guard = guard

    # -- the snapshot ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Rebuild the snapshot from the registry (after a change here or anywhere)."""
        rows = await self._local.read(self._registry.servable)
        servable: dict[str, AdapterVersion] = {}
        for row in rows:
            version = _version_of(row)
            servable[version.engine_name] = version
            self._states[version.engine_name] = row.state
        # Ready versions, most recently changed first, are what a fresh replica loads.
        ready = sorted(
            (r for r in rows if r.state == VersionState.READY),
            key=lambda r: r.updated_at,
            reverse=True,
        )
        self._servable = servable
        self._pinned = {_engine_name(r) for r in rows if r.pinned}
        self._wanted = [*sorted(self._pinned), *(_engine_name(r) for r in ready)]
        self._stable = {r.adapter.name: r.adapter.stable_version for r in rows}
        self._publish()
        self._pool.apply_pins()

    def _publish(self) -> None:
        """Make the servable versions the catalogue the request path resolves against."""
        self._catalogs.current = ModelCatalog(
            self._base.served_name, self._servable.values(), self._stable
        )

    async def start(self, *, seed: bool) -> None:
        """Recover from a crash, seed an empty registry and build the snapshot."""
        recovered = await asyncio.to_thread(self._registry.recover_interrupted, actor=SYSTEM)
        for row in recovered:
            log.warning(
                "%s@%s was left loading by a crash; it is registered again",
                row.adapter.name,
                row.version,
            )
        if seed and not await asyncio.to_thread(self._registry.adapters):
            await self._seed()
        await self.refresh()

    async def _seed(self) -> None:
        root = self._root.resolve()
        for found in scan_adapter_root(self._root):
            relative = found.path.relative_to(root).as_posix()
            command = RegisterCommand(found.name, relative, reason="found under the adapter root")
            with contextlib.suppress(InvalidRequest):
                view = await self.register(command, actor=f"{SYSTEM}:seed", refresh=False)
                log.info("registered %s@%s from %s", found.name, view.row.version, relative)

    # -- the pool's adapter source ------------------------------------------------------

    def servable(self) -> Mapping[str, AdapterVersion]:
        return self._servable

    def wanted(self) -> Sequence[str]:
        return self._wanted

    def pinned(self) -> set[str]:
        return set(self._pinned)

    async def before_load(self, version: AdapterVersion) -> str:
        try:
            return await asyncio.to_thread(self._verify, version)
        except (InvalidRequest, OSError) as exc:
            # The files moved, vanished or changed since registration: never load them.
            message = exc.message if isinstance(exc, InvalidRequest) else str(exc)
            self._metrics.adapter_load_failures.labels("-", "changed").inc()
            await self._record_failed(version, message)
            raise AdapterLoadFailed(f"{version.ref} cannot be loaded: {message}") from exc

    def _verify(self, version: AdapterVersion) -> str:
        """The absolute path, once the files still hash to the registered sha256."""
        directory = confine(self._root, version.path.as_posix())
        # Every hashed file: a weights file rewritten in place must be hashed again.
        stats = tuple(
            (s.st_size, s.st_mtime_ns, s.st_ino, s.st_dev)
            for s in (directory.joinpath(n).stat() for n in CONTENT_FILES)
        )
        signature = (str(directory), stats)
        if self._verified.get(version.engine_name) == signature:
            return str(directory)
        if content_sha256(directory) != version.sha256:
            raise InvalidRequest("its files changed since registration (sha256 mismatch)")
        self._verified[version.engine_name] = signature
        return str(directory)

    async def after_load(self, version: AdapterVersion, replica: str, error: str | None) -> None:
        if error is not None:
            await self._record_failed(version, f"the engine at {replica} refused it: {error}")
        elif self._states.get(version.engine_name) == VersionState.REGISTERED:
            await asyncio.to_thread(
                self._registry.set_state,
                version.name,
                version.version,
                VersionState.READY,
                actor=f"{SYSTEM}:loader",
                reason=f"loaded on demand into {replica}",
            )
            self._states[version.engine_name] = VersionState.READY

    async def _record_failed(self, version: AdapterVersion, reason: str) -> None:
        """Mark a version failed and take it out of the catalogue in memory; the rest of the
        snapshot follows at the refresh this requests (this runs inside a replica's residency
        lock: a refresh here would read the database and call out under it)."""
        with contextlib.suppress(Conflict):
            await asyncio.to_thread(
                self._registry.set_state,
                version.name,
                version.version,
                VersionState.FAILED,
                actor=f"{SYSTEM}:loader",
                reason=reason,
            )
        self._local.note()
        self._states[version.engine_name] = VersionState.FAILED
        self._servable = {k: v for k, v in self._servable.items() if k != version.engine_name}
        self._publish()
        self._changes.request()

    # -- reads -------------------------------------------------------------------------

    def following(self) -> dict[str, object]:
        """How this replica learns of changes made elsewhere (for `/readyz`)."""
        return self._changes.describe()

    async def adapters(self) -> list[AdapterView]:
        """Every adapter with every version, by name."""
        adapters = await asyncio.to_thread(self._registry.adapters)
        return [self._adapter_view(a) for a in adapters]

    async def adapter(self, name: str) -> AdapterView:
        """One adapter with every version."""
        return self._adapter_view(await asyncio.to_thread(self._registry.adapter, name))

    async def version(self, name: str, version: int) -> VersionView:
        """One version."""
        return self._view(await asyncio.to_thread(self._registry.version, name, version))

    async def audit(self, adapter: str | None, limit: int) -> Sequence[AuditEvent]:
        """The newest audit events (of one adapter, or of all), oldest first."""
        return await asyncio.to_thread(self._registry.audit, adapter, limit)

    def _view(self, row: AdapterVersionRow, *, created: bool = False) -> VersionView:
        name = _engine_name(row)
        replicas = [r.url for r in self._pool.replicas if r.residency.holds(name)]
        return VersionView(row, replicas, created)

    def _adapter_view(self, adapter: Adapter) -> AdapterView:
        versions = [self._view(v) for v in adapter.versions]
        return AdapterView(adapter.name, adapter.created_at, versions)

    # -- admin operations ---------------------------------------------------------------

    async def register(
        self, command: RegisterCommand, *, actor: str, refresh: bool = True
    ) -> VersionView:
        """Validate the files and register them (the same content again: the same version)."""
        with self._counted("register"):
            try:
                spec = await asyncio.to_thread(
                    check_registration,
                    command.name,
                    command.path,
                    sha256=command.sha256,
                    base_model=command.base_model,
                    manifest=command.manifest,
                    base=self._base,
                    root=self._root,
                    max_rank=self._max_rank,
                )
            except InvalidRequest as exc:
                detail = {"path": command.path, "param": exc.param}
                await asyncio.to_thread(
                    self._registry.record_refusal, command.name, exc.message, detail, actor=actor
                )
                raise
            registration = await asyncio.to_thread(
                self._registry.register,
                command.name,
                spec,
                actor=actor,
                reason=command.reason,
                serve_first=command.serve_first,
            )
            if refresh:
                await self.refresh()
            return self._view(registration.version, created=registration.created)

    async def load(
        self, name: str, version: int, *, pin: bool, actor: str, reason: str
    ) -> VersionView:
        """Load a version into every healthy replica now (and pin it if asked)."""
        with self._counted("load"):
            row = await asyncio.to_thread(self._registry.version, name, version)
            if row.state == VersionState.RETIRED:
                raise Conflict(f"{row_ref(row)} is retired", param="version")
            if not self._pool.healthy_replicas():
                raise UpstreamUnavailable("No inference engine is ready; retry shortly.")
            previous = row.state
            await self._set(row, VersionState.LOADING, actor, reason)
            target = _engine_name(row)
            if pin:
                await asyncio.to_thread(
                    self._registry.set_pinned, name, version, True, actor=actor, reason=reason
                )
                self._pool.pin(target)
            # Loadable now (a failed version tried again); the one refresh below agrees.
            self._servable = {**self._servable, target: _version_of(row)}
            self._states[target] = VersionState.LOADING
            try:
                await self._pool.load_everywhere(target)
            except GatewayError as exc:
                # A refused load already marked the version failed; either way the pin
                # this call asked for goes too, so a failed call leaves no half of itself.
                if pin and not row.pinned:
                    await asyncio.to_thread(
                        self._registry.set_pinned,
                        name,
                        version,
                        False,
                        actor=actor,
                        reason="the load did not finish",
                    )
                if not isinstance(exc, AdapterLoadFailed):
                    back = previous if previous in SERVABLE else VersionState.REGISTERED
                    await self._set(row, back, actor, "the load did not finish")
                await self.refresh()
                raise
            row = await self._set(row, VersionState.READY, actor, reason)
            await self.refresh()
            return self._view(row)

    async def unload(self, name: str, version: int, *, actor: str, reason: str) -> VersionView:
        """Unpin a version and unload it from every replica (it stays servable)."""
        with self._counted("unload"):
            self._refuse_in_rollout(name, version, "unloaded")
            row = await asyncio.to_thread(self._registry.version, name, version)
            self._refuse_busy(row, "unloaded")
            if row.pinned:
                await asyncio.to_thread(
                    self._registry.set_pinned, name, version, False, actor=actor, reason=reason
                )
            if row.state in (VersionState.READY, VersionState.LOADING):
                row = await self._set(row, VersionState.REGISTERED, actor, reason or "unloaded")
            await self.refresh()
            await self._pool.remove_everywhere(_engine_name(row))
            return await self.version(name, version)

    async def set_pinned(
        self, name: str, version: int, pinned: bool, *, actor: str, reason: str
    ) -> VersionView:
        """Pin (never evicted) or unpin a version."""
        with self._counted("pin" if pinned else "unpin"):
            if not pinned:
                self._refuse_in_rollout(name, version, "unpinned")
            row = await asyncio.to_thread(
                self._registry.set_pinned, name, version, pinned, actor=actor, reason=reason
            )
            await self.refresh()
            return self._view(row)

    async def set_stable(self, name: str, version: int, *, actor: str, reason: str) -> VersionView:
        """Serve `name@version` under `name` (the caller makes sure no rollout is running)."""
        row = await asyncio.to_thread(
            self._registry.set_stable, name, version, actor=actor, reason=reason
        )
        await self.refresh()
        return self._view(row)

    async def retire(self, name: str, version: int, *, actor: str, reason: str) -> VersionView:
        """Stop serving a version for good and unload it once no request uses it."""
        with self._counted("retire"):
            self._refuse_in_rollout(name, version, "retired")
            row = await asyncio.to_thread(self._registry.version, name, version)
            if row.state == VersionState.RETIRED:
                # `set_state` treats the same state as a no-op; retiring twice is a mistake.
                raise Conflict(f"{row_ref(row)} is retired already", param="version")
            row = await self._set(row, VersionState.RETIRED, actor, reason)
            await self.refresh()
            await self._pool.remove_everywhere(_engine_name(row))
            return self._view(row)

    async def delete(self, name: str, version: int, *, actor: str, reason: str) -> None:
        """Remove a retired or failed version from the registry."""
        with self._counted("delete"):
            self._refuse_in_rollout(name, version, "deleted")
            row = await asyncio.to_thread(self._registry.version, name, version)
            self._refuse_busy(row, "deleted")
            await asyncio.to_thread(
                self._registry.delete, name, version, actor=actor, reason=reason
            )
            await self.refresh()

    def _refuse_in_rollout(self, name: str, version: int, what: str) -> None:
        rollout = self._guard(name, version)
        if rollout is not None:
            raise Conflict(
                f"{name}@{version} is in rollout {rollout}; it cannot be {what} until the "
                "rollout ends",
                param="version",
                code="in_rollout",
            )

    def _refuse_busy(self, row: AdapterVersionRow, what: str) -> None:
        busy = self._pool.busy(_engine_name(row))
        if busy:
            raise Conflict(
                f"{row_ref(row)} is serving {busy} requests; it cannot be {what} now",
                param="version",
            )

    async def _set(
        self, row: AdapterVersionRow, state: VersionState, actor: str, reason: str
    ) -> AdapterVersionRow:
        return await asyncio.to_thread(
            self._registry.set_state,
            row.adapter.name,
            row.version,
            state,
            actor=actor,
            reason=reason,
        )

    @contextlib.contextmanager
    def _counted(self, operation: str) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._metrics.registry_operations.labels(operation, "error").inc()
            raise
        self._metrics.registry_operations.labels(operation, "ok").inc()


def _engine_name(row: AdapterVersionRow) -> str:
    return engine_name(row.adapter.name, row.version)


def _version_of(row: AdapterVersionRow) -> AdapterVersion:
    return AdapterVersion(row.adapter.name, row.version, Path(row.path), sha256=row.sha256)


def row_ref(row: AdapterVersionRow) -> str:
    """`name@version` of a registry row."""
    return f"{row.adapter.name}@{row.version}"
