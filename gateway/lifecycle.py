"""Adapter versions from registration to retirement: the registry and the replicas in step.

`AdapterLifecycle` validates and registers versions, loads, unloads, pins, retires and
deletes them, and keeps an in-memory snapshot of the registry (the servable versions, the
catalogue clients resolve `model` against, the pins) that the request path reads without
touching the database. The snapshot is rebuilt after every change made here and whenever
the registry's newest audit event changes (another gateway replica changed something).
It is also the pool's `AdapterSource`: it checks files again before each load and records
each load's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import Conflict, GatewayError, InvalidRequest, UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.registry.schema import AdapterVersionRow, VersionState
from gateway.registry.store import SERVABLE, Registration, Registry, VersionSpec
from gateway.registry.validation import (
    CONTENT_FILES,
    BaseModelInfo,
    confine,
    content_sha256,
    validate_adapter,
)
from gateway.routing.catalog import (
    ADAPTER_NAME,
    AdapterVersion,
    CatalogView,
    ModelCatalog,
    scan_adapter_root,
)
from gateway.upstream.pool import AdapterLoadFailed, UpstreamPool

log = logging.getLogger(__name__)
# Names clients use for something other than an adapter.
RESERVED_NAMES = frozenset({"auto"})
SYSTEM = "system"


@dataclass(frozen=True)
class BaseModel:
    """The base model adapters must fit: its names and its shapes."""

    served_name: str
    model_id: str
    info: BaseModelInfo | None

    def accepts(self, named: str | None) -> bool:
        """Whether an adapter naming `named` as its base fits (local paths are not names)."""
        if not named or named.startswith(("/", ".", "~")):
            return True
        return named.lower() in {self.served_name.lower(), self.model_id.lower()}


@dataclass(frozen=True)
class RegisterCommand:
    """A registration as the admin API received it."""

    name: str
    path: str
    sha256: str | None = None
    base_model: str | None = None
    manifest: Mapping[str, Any] | None = None
    reason: str = ""


class AdapterLifecycle:
    """Registers, loads, pins, retires and deletes adapter versions."""

    def __init__(
        self,
        registry: Registry,
        *,
        adapter_root: Path,
        base: BaseModel,
        max_rank: int,
        metrics: Metrics,
        catalogs: CatalogView,
    ) -> None:
        self.registry = registry
        self._root = adapter_root
        self._base = base
        self._max_rank = max_rank
        self._metrics = metrics
        self._catalogs = catalogs
        self._pool: UpstreamPool | None = None
        self._servable: dict[str, AdapterVersion] = {}
        self._states: dict[str, VersionState] = {}
        self._pinned: set[str] = set()
        self._wanted: list[str] = []
        self._verified: dict[str, tuple[str, tuple[tuple[int, int, int, int], ...]]] = {}
        self._seen_event = -1
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._guard: Callable[[str, int], int | None] = lambda name, version: None

    def attach(self, pool: UpstreamPool) -> None:
        """The pool whose replicas hold the versions."""
        self._pool = pool
        pool.source = self

    def on_refresh(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call `listener` after every snapshot rebuild (the registry may have changed)."""
        self._listeners.append(listener)

    def protect(self, guard: Callable[[str, int], int | None]) -> None:
        """`guard(name, version)` names the rollout that needs a version (it is not unloaded,
        unpinned, retired or deleted while that rollout is active)."""
        self._guard = guard

    @property
    def pool(self) -> UpstreamPool:
        assert self._pool is not None, "attach a pool first"
        return self._pool

    # -- the snapshot ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Rebuild the snapshot from the registry."""
        seen = await asyncio.to_thread(self.registry.last_event_id)
        rows = await asyncio.to_thread(self.registry.servable)
        servable: dict[str, AdapterVersion] = {}
        for row in rows:
            version = AdapterVersion(
                row.adapter.name, row.version, Path(row.path), sha256=row.sha256
            )
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
        stable = {r.adapter.name: r.adapter.stable_version for r in rows}
        self._catalogs.current = ModelCatalog(self._base.served_name, servable.values(), stable)
        self._seen_event = seen
        if self._pool is not None:
            self.pool.apply_pins()
        for listener in self._listeners:
            try:
                await listener()
            except Exception:
                log.exception("a registry listener failed; it runs again at the next change")

    async def start(self, *, seed: bool, poll_s: float) -> None:
        """Recover from a crash, seed an empty registry, build the snapshot, start polling."""
        recovered = await asyncio.to_thread(self.registry.recover_interrupted, actor=SYSTEM)
        for row in recovered:
            log.warning(
                "%s@%s was left loading by a crash; it is registered again",
                row.adapter.name,
                row.version,
            )
        if seed and not await asyncio.to_thread(self.registry.adapters):
            await self._seed()
        await self.refresh()
        self._task = asyncio.create_task(self._poll(poll_s), name="registry-poll")

    async def stop(self) -> None:
        """Stop polling the registry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await asyncio.to_thread(self.registry.last_event_id) != self._seen_event:
                    await self.refresh()
                # Every tick, changed or not: a version retired while requests used it is
                # unloaded once they are done.
                await self.pool.sweep()
            except Exception:
                log.exception("reading the registry failed; the last snapshot keeps serving")

    async def _seed(self) -> None:
        root = self._root.resolve()
        for found in scan_adapter_root(self._root):
            relative = found.path.relative_to(root).as_posix()
            command = RegisterCommand(found.name, relative, reason="found under the adapter root")
            with contextlib.suppress(InvalidRequest):
                registration = await self.register(command, actor=f"{SYSTEM}:seed", refresh=False)
                log.info(
                    "registered %s@%s from %s", found.name, registration.version.version, relative
                )

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
            await self._mark_failed(version, message)
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
            await self._mark_failed(version, f"the engine at {replica} refused it: {error}")
        elif self._states.get(version.engine_name) == VersionState.REGISTERED:
            await asyncio.to_thread(
                self.registry.set_state,
                version.name,
                version.version,
                VersionState.READY,
                actor=f"{SYSTEM}:loader",
                reason=f"loaded on demand into {replica}",
            )
            self._states[version.engine_name] = VersionState.READY

    async def _mark_failed(self, version: AdapterVersion, reason: str) -> None:
        with contextlib.suppress(Conflict):
            await asyncio.to_thread(
                self.registry.set_state,
                version.name,
                version.version,
                VersionState.FAILED,
                actor=f"{SYSTEM}:loader",
                reason=reason,
            )
        await self.refresh()

    # -- admin operations ---------------------------------------------------------------

    async def register(
        self, command: RegisterCommand, *, actor: str, refresh: bool = True
    ) -> Registration:
        """Validate the files and register them (the same content again: the same version)."""
        with self._counted("register"):
            try:
                spec = await asyncio.to_thread(self._validate, command)
            except InvalidRequest as exc:
                detail = {"path": command.path, "param": exc.param}
                await asyncio.to_thread(
                    self.registry.record_refusal, command.name, exc.message, detail, actor=actor
                )
                raise
            registration = await asyncio.to_thread(
                self.registry.register, command.name, spec, actor=actor, reason=command.reason
            )
            if refresh:
                await self.refresh()
            return registration

    def _validate(self, command: RegisterCommand) -> VersionSpec:
        name = command.name
        if not ADAPTER_NAME.match(name) or "--" in name:
            raise InvalidRequest(
                "name must be 1-63 lowercase letters, digits, '.', '_' or '-' (no '--')",
                param="name",
            )
        if name in RESERVED_NAMES or name == self._base.served_name:
            raise InvalidRequest(f"{name!r} is reserved", param="name")
        if self._base.info is None:
            raise InvalidRequest(
                "the gateway does not know the base model's shapes; set GATEWAY_ENGINE__MODEL_DIR",
                param="path",
            )
        manifest = dict(command.manifest or {})
        for named in (command.base_model, manifest.get("base_model")):
            if isinstance(named, str) and not self._base.accepts(named):
                raise InvalidRequest(
                    f"the adapter is for base model {named!r}; this gateway serves "
                    f"{self._base.model_id!r}",
                    param="base_model",
                )
        checked = validate_adapter(
            self._root,
            command.path,
            self._base.info,
            max_rank=self._max_rank,
            expected_sha256=command.sha256,
        )
        if not self._base.accepts(checked.base_model):
            raise InvalidRequest(
                f"adapter_config.json names base model {checked.base_model!r}; this gateway "
                f"serves {self._base.model_id!r}",
                param="path",
            )
        return VersionSpec(
            path=checked.relative,
            sha256=checked.sha256,
            base_model=self._base.model_id,
            rank=checked.rank,
            target_modules=checked.target_modules,
            manifest=manifest,
        )

    async def load(
        self, name: str, version: int, *, pin: bool, actor: str, reason: str
    ) -> AdapterVersionRow:
        """Load a version into every healthy replica now (and pin it if asked)."""
        with self._counted("load"):
            row = await asyncio.to_thread(self.registry.version, name, version)
            if row.state == VersionState.RETIRED:
                raise Conflict(f"{row_ref(row)} is retired", param="version")
            if not self.pool.healthy_replicas():
                raise UpstreamUnavailable("No inference engine is ready; retry shortly.")
            previous = row.state
            await self._set(row, VersionState.LOADING, actor, reason)
            if pin:
                await asyncio.to_thread(
                    self.registry.set_pinned, name, version, True, actor=actor, reason=reason
                )
            await self.refresh()
            try:
                await self.pool.load_everywhere(_engine_name(row))
            except GatewayError as exc:
                # A refused load already marked the version failed; either way the pin
                # this call asked for goes too, so a failed call leaves no half of itself.
                if pin and not row.pinned:
                    await asyncio.to_thread(
                        self.registry.set_pinned,
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
            return row

    async def unload(
        self, name: str, version: int, *, actor: str, reason: str
    ) -> AdapterVersionRow:
        """Unpin a version and unload it from every replica (it stays servable)."""
        with self._counted("unload"):
            self._refuse_in_rollout(name, version, "unloaded")
            row = await asyncio.to_thread(self.registry.version, name, version)
            self._refuse_busy(row, "unloaded")
            if row.pinned:
                await asyncio.to_thread(
                    self.registry.set_pinned, name, version, False, actor=actor, reason=reason
                )
            if row.state in (VersionState.READY, VersionState.LOADING):
                row = await self._set(row, VersionState.REGISTERED, actor, reason or "unloaded")
            await self.refresh()
            await self.pool.remove_everywhere(_engine_name(row))
            return await asyncio.to_thread(self.registry.version, name, version)

    async def set_pinned(
        self, name: str, version: int, pinned: bool, *, actor: str, reason: str
    ) -> AdapterVersionRow:
        """Pin (never evicted) or unpin a version."""
        with self._counted("pin" if pinned else "unpin"):
            if not pinned:
                self._refuse_in_rollout(name, version, "unpinned")
            row = await asyncio.to_thread(
                self.registry.set_pinned, name, version, pinned, actor=actor, reason=reason
            )
            await self.refresh()
            return row

    async def retire(
        self, name: str, version: int, *, actor: str, reason: str
    ) -> AdapterVersionRow:
        """Stop serving a version for good and unload it once no request uses it."""
        with self._counted("retire"):
            self._refuse_in_rollout(name, version, "retired")
            row = await asyncio.to_thread(self.registry.version, name, version)
            if row.state == VersionState.RETIRED:
                # `set_state` treats the same state as a no-op; retiring twice is a mistake.
                raise Conflict(f"{row_ref(row)} is retired already", param="version")
            row = await self._set(row, VersionState.RETIRED, actor, reason)
            await self.refresh()
            await self.pool.remove_everywhere(_engine_name(row))
            return row

    async def delete(self, name: str, version: int, *, actor: str, reason: str) -> None:
        """Remove a retired or failed version from the registry."""
        with self._counted("delete"):
            self._refuse_in_rollout(name, version, "deleted")
            row = await asyncio.to_thread(self.registry.version, name, version)
            self._refuse_busy(row, "deleted")
            await asyncio.to_thread(self.registry.delete, name, version, actor=actor, reason=reason)
            await self.refresh()

    def resident_on(self, row: AdapterVersionRow) -> list[str]:
        """The replicas holding a version right now."""
        name = _engine_name(row)
        return [r.url for r in self.pool.replicas if name in r.residency.resident]

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
        busy = self.pool.busy(_engine_name(row))
        if busy:
            raise Conflict(
                f"{row_ref(row)} is serving {busy} requests; it cannot be {what} now",
                param="version",
            )

    async def _set(
        self, row: AdapterVersionRow, state: VersionState, actor: str, reason: str
    ) -> AdapterVersionRow:
        return await asyncio.to_thread(
            self.registry.set_state,
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
    return f"{row.adapter.name}--v{row.version}"


def row_ref(row: AdapterVersionRow) -> str:
    """`name@version` of a registry row."""
    return f"{row.adapter.name}@{row.version}"
