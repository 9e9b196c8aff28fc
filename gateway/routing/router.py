"""`model: "auto"`: the route table in use, its index, and each request's decision.

The registry holds the table (every replacement a new row with its audit event); every
gateway replica builds its own index from the newest row, and rebuilds when the registry
changes. A replacement is checked whole (shape, regexes, adapters) and its utterances
embedded before it is stored: a bad table is refused with every problem listed, and the
old table keeps serving throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.catalog import CatalogView, ModelCatalog, Target
from gateway.config import RoutingSettings
from gateway.errors import ClassifierUnavailable, InvalidRouteTable, ModelNotFound
from gateway.metrics import Metrics
from gateway.registry.documents import WholeDocuments
from gateway.registry.schema import RouteTableRow
from gateway.routing.batcher import EmbeddingBatcher, Overloaded
from gateway.routing.classifier import Decision, RouteIndex, classify, groups_of
from gateway.routing.conversation import Conversation, conversation_of
from gateway.routing.embedder import DIMENSIONS, ModelMissing, Vectors, load_embedder
from gateway.routing.head import Head
from gateway.routing.headcache import HeadCache
from gateway.routing.table import RouteTable, check_adapters, parse_table, read_table_source
from gateway.routing.vectorcache import VectorCache, vector_cache

log = logging.getLogger(__name__)
SEED_ACTOR = "system:seed"
# Request texts whose vectors are kept: a chat's earlier turns were once its last message.
RECENT_TEXTS = 4096


@dataclass(frozen=True)
class Explanation:
    """A decision with its evidence: every route's score and the threshold it had to pass."""

    text: str
    decision: Decision
    scores: dict[str, float]
    # The threshold of the route chosen (or nearly chosen); None when nothing came close.
    threshold: float | None
    table: int
    # The earlier user turns read with the text (a follow-up); empty otherwise.
    earlier: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActiveTable:
    """The table in use: its registry row id, text and index."""

    id: int
    source: str
    sha256: str
    index: RouteIndex
    created_by: str
    created_at: str


def _sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


class AutoRouter:
    """Owns the route table in use and classifies `auto` requests against it."""

    def __init__(
        self,
        tables: WholeDocuments[RouteTableRow],
        catalogs: CatalogView,
        settings: RoutingSettings,
        metrics: Metrics,
        *,
        cache_dir: Path,
    ) -> None:
        self._tables = tables
        self._catalogs = catalogs
        self._settings = settings
        self._metrics = metrics
        self._cache_dir = cache_dir
        self._batcher: EmbeddingBatcher | None = None
        self._stored: VectorCache | None = None
        self._active: ActiveTable | None = None
        self._changing = asyncio.Lock()
        # Example vectors of the table in use (and of a table being built).
        self._vectors: dict[str, Vectors] = {}
        # Vectors of recent request texts (least recently used first).
        self._recent: OrderedDict[str, Vectors] = OrderedDict()

    @property
    def active(self) -> ActiveTable | None:
        """The table in use, if any."""
        return self._active

    def in_use(self) -> ActiveTable:
        """The table in use; ModelNotFound when there is none."""
        if self._active is None:
            raise ModelNotFound("No route table is in use.", param="routes", code="not_found")
        return self._active

    # -- the table ---------------------------------------------------------------------

    async def start(self, seed: str | None) -> None:
        """Use the registry's table; with none there, store `seed` (a path or `demo`)."""
        if await asyncio.to_thread(self._tables.newest_id):
            await self.refresh()
            return
        if seed is None:
            log.info("no route table: `auto` is unavailable until one is put (PUT /admin/routes)")
            return
        try:
            source = await asyncio.to_thread(read_table_source, seed)
            await self.replace(source, actor=SEED_ACTOR, reason=f"seeded from {seed}")
        except (OSError, InvalidRouteTable, ClassifierUnavailable) as exc:
            log.error("the route table %s was not used: %s", seed, exc)

    async def refresh(self) -> None:
        """Install the registry's newest table when it is not the one in use."""
        newest = await asyncio.to_thread(self._tables.newest_id)
        current = self._active.id if self._active else 0
        if newest == current:
            return
        async with self._changing:
            row = await asyncio.to_thread(self._tables.newest)
            if row is None or (self._active and self._active.id == row.id):
                return
            try:
                table = parse_table(row.source)
                index = await self._build(table)
            except (InvalidRouteTable, ClassifierUnavailable) as exc:
                log.error("route table %s in the registry was not installed: %s", row.id, exc)
                return
            self._install(
                ActiveTable(
                    row.id,
                    row.source,
                    row.sha256,
                    index,
                    row.created_by,
                    row.created_at.isoformat(),
                )
            )

    async def replace(
        self, source: str, *, actor: str, reason: str = "", dry_run: bool = False
    ) -> ActiveTable:
        """Check, index and store `source` as the table in use (or only check it)."""
        sha = _sha256(source)
        async with self._changing:
            try:
                table = parse_table(source)
                check_adapters(table, self._catalogs.current)
            except InvalidRouteTable as exc:
                if not dry_run:
                    await asyncio.to_thread(
                        self._tables.record_refusal, exc.message, sha, actor=actor
                    )
                self._metrics.registry_operations.labels("routes", "refused").inc()
                raise
            index = await self._build(table)
            if dry_run:
                return ActiveTable(0, source, sha, index, actor, "")
            routes = {route.name: route.adapter for route in table.routes}
            row = await asyncio.to_thread(
                self._tables.put, source, sha, routes, actor=actor, reason=reason
            )
            active = ActiveTable(
                row.id, source, sha, index, row.created_by, row.created_at.isoformat()
            )
            self._install(active)
            self._metrics.registry_operations.labels("routes", "ok").inc()
            return active

    async def _build(self, table: RouteTable) -> RouteIndex:
        """Embed a table's examples and, for a `head` table, train its head on a thread."""

        async def train(fit: Callable[[], Head]) -> Head:
            return await asyncio.to_thread(fit)

        heads = HeadCache(self._cache_dir / "classifier")
        return await RouteIndex.build(table, self._embed_utterances, train, heads)

    async def _embed_utterances(self, texts: list[str]) -> Vectors:
        """Vectors of a table's examples; those of the table in use are not embedded again
        (an edited table mostly repeats them), nor those kept on disk from an earlier
        start (`vectorcache`)."""
        batcher = await self._embedder()
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing and self._stored is not None:
            self._vectors.update(await asyncio.to_thread(self._stored.found, missing))
            missing = [text for text in missing if text not in self._vectors]
        if missing:
            fresh = dict(zip(missing, await batcher.embed_many(missing), strict=True))
            self._vectors.update(fresh)
            if self._stored is not None:
                await asyncio.to_thread(self._stored.store, fresh)
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return np.stack([self._vectors[text] for text in texts])

    def _install(self, active: ActiveTable) -> None:
        keep = {text for _, texts in groups_of(active.index.table) for text in texts}
        self._vectors = {text: v for text, v in self._vectors.items() if text in keep}
        self._active = active
        self._metrics.route_table_id.set(active.id)
        log.info(
            "route table %s in use: %s",
            active.id,
            ", ".join(f"{r.name}->{r.adapter}" for r in active.index.table.routes),
        )

    async def _embedder(self) -> EmbeddingBatcher:
        if self._batcher is None:
            settings = self._settings
            try:
                embedder = await asyncio.to_thread(
                    load_embedder,
                    self._cache_dir,
                    model=settings.model_path,
                    tokenizer=settings.tokenizer_path,
                    threads=settings.threads,
                    max_tokens=settings.max_tokens,
                )
            except (ModelMissing, OSError, RuntimeError) as exc:
                message = f"the embedding model could not be loaded: {exc}"
                raise ClassifierUnavailable(message) from exc
            self._stored = await asyncio.to_thread(vector_cache, embedder, self._cache_dir)
            self._batcher = EmbeddingBatcher(
                embedder,
                self._metrics,
                max_batch=settings.max_batch,
                max_pending=settings.max_pending,
            )
        return self._batcher

    async def close(self) -> None:
        """Stop the embedding worker."""
        if self._batcher is not None:
            await self._batcher.close()

    # -- requests ----------------------------------------------------------------------

    def _index(self) -> RouteIndex:
        if self._active is None:
            raise ModelNotFound(
                "The model 'auto' is not available: no route table is configured.",
                param="model",
            )
        return self._active.index

    async def decide(self, conversation: Conversation | str) -> Decision:
        """Classify one text (or a chat's last message with its earlier turns)."""
        if isinstance(conversation, str):
            conversation = Conversation(conversation)
        index = self._index()
        started = time.perf_counter()
        decision = await self._classify(index, conversation)
        self._metrics.route_classify_duration.labels(decision.method).observe(
            time.perf_counter() - started
        )
        return decision

    async def _classify(self, index: RouteIndex, conversation: Conversation) -> Decision:
        return await classify(index, conversation, self._vectors_of)

    async def _vectors_of(self, texts: list[str]) -> list[Vectors]:
        """Vectors of request texts, the recently seen ones from memory."""
        assert self._batcher is not None, "a table in use has its embedder"
        keys = [_text_key(text) for text in texts]
        found: dict[int, Vectors] = {}
        for i, key in enumerate(keys):
            if key in self._recent:
                self._recent.move_to_end(key)
                found[i] = self._recent[key]
        missing = [i for i in range(len(texts)) if i not in found]
        if len(missing) == 1:
            found[missing[0]] = await self._batcher.embed_one(texts[missing[0]])
        elif missing:
            fresh = await self._batcher.embed_many([texts[i] for i in missing])
            found.update(zip(missing, fresh, strict=True))
        for i in missing:
            self._recent[keys[i]] = found[i]
        while len(self._recent) > RECENT_TEXTS:
            self._recent.popitem(last=False)
        return [found[i] for i in range(len(texts))]

    async def route(
        self, payload: Mapping[str, Any], catalog: ModelCatalog, may_use: Callable[[str], bool]
    ) -> tuple[Target, Decision]:
        """The target of an `auto` request: its route's adapter, or the base model."""
        turns = self._index().context_turns
        decision = await self.decide(conversation_of(payload, turns))
        base = catalog.resolve(catalog.base_model)
        if decision.adapter is not None:
            try:
                target = catalog.resolve(decision.adapter)
            except ModelNotFound:
                # Retired or deleted since the table was put: serve the base model.
                decision = decision.to_fallback(self._index().default, "unavailable")
            else:
                if may_use(target.route):
                    self._count(decision)
                    return target, decision
                decision = decision.to_fallback(self._index().default, "not_allowed")
        self._count(decision)
        return base, decision

    def _count(self, decision: Decision) -> None:
        self._metrics.route_decisions.labels(decision.route, decision.method).inc()
        if decision.method == "fallback":
            self._metrics.route_fallbacks.labels(decision.reason).inc()

    async def explain(self, request: Mapping[str, Any]) -> Explanation:
        """Where a request (`text`, chat `messages` or a completion `prompt`) would go, with
        every route's score (a rule that decides alone does not stop the scoring)."""
        active = self._active
        index = self._index()
        conversation = conversation_of(request, index.context_turns)
        decision = await self._classify(index, conversation)
        scores = dict(decision.scores)
        if not scores and conversation.text and decision.reason != "overloaded":
            with contextlib.suppress(Overloaded):
                vector = (await self._vectors_of([conversation.text]))[0]
                scores = index.scores(vector, conversation.text)
        table = index.table
        threshold = None
        if decision.route != table.default.name or decision.chosen is not None:
            threshold = table.threshold_of(table.route(decision.chosen or decision.route))
        assert active is not None
        earlier = conversation.earlier if decision.context_scores is not None else ()
        return Explanation(conversation.text, decision, scores, threshold, active.id, earlier)


def _text_key(text: str) -> str:
    if len(text) <= 256:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
