"""A document kept whole in the registry, and the one in use held here: seeded when the
registry has none, replaced whole (checked first, a refusal audited and the one in use
kept) and followed from the registry as other replicas replace it.

A kind of document subclasses `DocumentHolder` with how to read its seed, parse and prepare
its text (in a worker thread), summarise it for the audit trail, and install it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from gateway.errors import InvalidDocument
from gateway.metrics import Metrics
from gateway.registry.documents import WholeDocuments

log = logging.getLogger(__name__)
SEED_ACTOR = "gateway:seed"
Doc = TypeVar("Doc")
Ready = TypeVar("Ready")


@dataclass(frozen=True)
class InUse(Generic[Doc]):
    """A document in use: its registry row id (0: a dry run), sha256, parsed form, author and
    time of storage (empty for a dry run)."""

    id: int
    sha256: str
    document: Doc
    created_by: str
    created_at: str


Active = TypeVar("Active", bound=InUse[Any])


class DocumentHolder(ABC, Generic[Doc, Ready, Active]):
    """Owns one kind of document in use. `Ready` is what preparing it built besides the parsed
    form (workers' state, installed with it); `Active` is the kind's `InUse`."""

    # How logs name the document ("scorer configuration"), and the operation label of
    # `gateway_registry_operations_total` ("scorers").
    what: ClassVar[str]
    operation: ClassVar[str]
    # Said when the registry holds none and there is no seed.
    absent: ClassVar[str]
    # The kind's `InUse` subclass.
    active_type: type[Active]

    def __init__(self, store: WholeDocuments[Any], metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._active: Active | None = None
        self._changing = asyncio.Lock()

    @property
    def active(self) -> Active | None:
        """The document in use, if any."""
        return self._active

    async def start(self, seed: str | None) -> None:
        """Use the registry's document; with none there, store `seed` (a path or `demo`)."""
        if await asyncio.to_thread(self._store.newest_id):
            await self.refresh()
            return
        if seed is None:
            log.info("%s", self.absent)
            return
        try:
            source = await asyncio.to_thread(self.read_seed, seed)
            await self.replace(source, actor=SEED_ACTOR, reason=f"seeded from {seed}")
        except (OSError, InvalidDocument) as exc:
            log.error("the %s %s was not used: %s", self.what, seed, exc)

    async def refresh(self) -> None:
        """Install the registry's newest document when it is not the one in use."""
        newest = await asyncio.to_thread(self._store.newest_id)
        if newest == (self._active.id if self._active else 0):
            return
        async with self._changing:
            row = await asyncio.to_thread(self._store.newest)
            if row is None or (self._active and self._active.id == row.id):
                return
            try:
                document, ready = await asyncio.to_thread(self.prepare, row.source)
            except InvalidDocument as exc:
                log.error("%s %s was not installed: %s", self.what, row.id, exc)
                return
            created = row.created_at.isoformat()
            self._install(
                self.active_type(row.id, row.sha256, document, row.created_by, created), ready
            )

    async def replace(
        self, source: str, *, actor: str, reason: str = "", dry_run: bool = False
    ) -> Active:
        """Check and store `source` as the document in use (or only check it)."""
        sha = hashlib.sha256(source.encode()).hexdigest()
        async with self._changing:
            try:
                document, ready = await asyncio.to_thread(self.prepare, source)
            except InvalidDocument as exc:
                if not dry_run:
                    await asyncio.to_thread(
                        self._store.record_refusal, exc.message, sha, actor=actor
                    )
                self._metrics.registry_operations.labels(self.operation, "refused").inc()
                raise
            if dry_run:
                return self.active_type(0, sha, document, actor, "")
            routes = self.summary(document)
            row = await asyncio.to_thread(
                self._store.put, source, sha, routes, actor=actor, reason=reason
            )
            created = row.created_at.isoformat()
            active = self.active_type(row.id, sha, document, row.created_by, created)
            self._install(active, ready)
            self._metrics.registry_operations.labels(self.operation, "ok").inc()
            return active

    def _install(self, active: Active, ready: Ready) -> None:
        self._active = active
        self.install(active, ready)
        log.info(
            "%s %s in use (%s routes)", self.what, active.id, len(self.summary(active.document))
        )

    @abstractmethod
    def read_seed(self, seed: str) -> str:
        """The seed's text (a path, or `demo`)."""

    @abstractmethod
    def prepare(self, source: str) -> tuple[Doc, Ready]:
        """Parse and check `source` (raising an `InvalidDocument`) and build what it needs;
        runs in a worker thread."""

    @abstractmethod
    def summary(self, document: Doc) -> dict[str, Any]:
        """What the audit trail keeps of a document: each route's entries."""

    def install(self, active: Active, ready: Ready) -> None:
        """Put what `prepare` built to work (nothing by default)."""
