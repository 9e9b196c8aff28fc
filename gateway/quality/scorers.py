"""The scorer configuration in use: seeded, replaced whole through the admin API, followed
from the registry, and handed to the scoring workers.

Parsing builds every verifier (the language detector loads its model the first time, about
half a second), so it runs in a worker thread. A bad configuration is refused with every
problem listed, audited, and the one in use keeps scoring.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

from gateway.errors import InvalidScorerConfig
from gateway.metrics import Metrics
from gateway.quality.config import ScorerConfig, parse_scorer_config, read_scorer_source
from gateway.quality.judging import JudgeFactory, Judges, Judging
from gateway.quality.scoring import Prepared, Scoring
from gateway.registry.documents import WholeDocuments
from gateway.registry.schema import ScorerConfigRow

log = logging.getLogger(__name__)
SEED_ACTOR = "gateway:seed"
# A configuration ready to install: its verifiers and reward models, and its judges.
Ready = tuple[Prepared, Judges | None]


@dataclass(frozen=True)
class ActiveScorers:
    """The configuration in use: its registry row id (0: a dry run), text and parsed form."""

    id: int
    sha256: str
    config: ScorerConfig
    created_by: str
    created_at: str


class ScorerConfigs:
    """Owns the scorer configuration in use."""

    def __init__(
        self,
        store: WholeDocuments[ScorerConfigRow],
        scoring: Scoring,
        metrics: Metrics,
        judging: Judging | None = None,
        judges: JudgeFactory | None = None,
    ) -> None:
        self._store = store
        self._scoring = scoring
        self._judging = judging
        self._judge_factory = judges
        self._metrics = metrics
        self._active: ActiveScorers | None = None
        self._changing = asyncio.Lock()

    @property
    def active(self) -> ActiveScorers | None:
        """The configuration in use, if any."""
        return self._active

    async def start(self, seed: str | None) -> None:
        """Use the registry's configuration; with none there, store `seed` (a path or `demo`)."""
        if await asyncio.to_thread(self._store.newest_id):
            await self.refresh()
            return
        if seed is None:
            log.info("no scorer configuration: nothing is scored until one is put")
            return
        try:
            source = await asyncio.to_thread(read_scorer_source, seed)
            await self.replace(source, actor=SEED_ACTOR, reason=f"seeded from {seed}")
        except (OSError, InvalidScorerConfig) as exc:
            log.error("the scorer configuration %s was not used: %s", seed, exc)

    async def refresh(self) -> None:
        """Install the registry's newest configuration when it is not the one in use."""
        newest = await asyncio.to_thread(self._store.newest_id)
        if newest == (self._active.id if self._active else 0):
            return
        async with self._changing:
            row = await asyncio.to_thread(self._store.newest)
            if row is None or (self._active and self._active.id == row.id):
                return
            try:
                config, ready = await asyncio.to_thread(self._prepare, row.source)
            except InvalidScorerConfig as exc:
                log.error("scorer configuration %s was not installed: %s", row.id, exc)
                return
            created = row.created_at.isoformat()
            active = ActiveScorers(row.id, row.sha256, config, row.created_by, created)
            self._install(active, ready)

    async def replace(
        self, source: str, *, actor: str, reason: str = "", dry_run: bool = False
    ) -> ActiveScorers:
        """Check and store `source` as the configuration in use (or only check it)."""
        sha = hashlib.sha256(source.encode()).hexdigest()
        async with self._changing:
            try:
                config, ready = await asyncio.to_thread(self._prepare, source)
            except InvalidScorerConfig as exc:
                if not dry_run:
                    await asyncio.to_thread(
                        self._store.record_refusal, exc.message, sha, actor=actor
                    )
                self._metrics.registry_operations.labels("scorers", "refused").inc()
                raise
            if dry_run:
                return ActiveScorers(0, sha, config, actor, "")
            routes = {
                route: [scorer.name for scorer in config.for_route(route)]
                for route in config.route_names()
            }
            row = await asyncio.to_thread(
                self._store.put, source, sha, routes, actor=actor, reason=reason
            )
            active = ActiveScorers(row.id, sha, config, row.created_by, row.created_at.isoformat())
            self._install(active, ready)
            self._metrics.registry_operations.labels("scorers", "ok").inc()
            return active

    def _prepare(self, source: str) -> tuple[ScorerConfig, Ready]:
        """Parse `source`, load its reward models and build its judges (in a worker thread)."""
        config = parse_scorer_config(source)
        judges = Judges.of(config, self._judge_factory) if self._judge_factory else None
        return config, (self._scoring.prepare(config), judges)

    def _install(self, active: ActiveScorers, ready: Ready) -> None:
        self._active = active
        prepared, judges = ready
        self._scoring.install(prepared)
        if self._judging is not None and judges is not None:
            self._judging.install(judges)
        log.info(
            "scorer configuration %s in use (%s routes)",
            active.id,
            len(active.config.route_names()),
        )
