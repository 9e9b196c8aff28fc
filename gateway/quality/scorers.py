"""The scorer configuration in use: seeded, replaced whole through the admin API, followed
from the registry, and handed to the scoring workers.

Parsing builds every verifier (the language detector loads its model the first time, about
half a second), so it runs in a worker thread. A bad configuration is refused with every
problem listed, audited, and the one in use keeps scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.documents.holder import DocumentHolder, InUse
from gateway.metrics import Metrics
from gateway.quality.config import ScorerConfig, parse_scorer_config, read_scorer_source
from gateway.quality.judging import JudgeFactory, Judges, Judging
from gateway.quality.scoring import Prepared, Scoring
from gateway.registry.documents import WholeDocuments
from gateway.registry.schema import ScorerConfigRow

# A configuration ready to install: its verifiers and reward models, and its judges.
Ready = tuple[Prepared, Judges | None]


@dataclass(frozen=True)
class ActiveScorers(InUse[ScorerConfig]):
    """The configuration in use: its registry row id (0: a dry run), text and parsed form."""

    @property
    def config(self) -> ScorerConfig:
        """The parsed configuration."""
        return self.document


class ScorerConfigs(DocumentHolder[ScorerConfig, Ready, ActiveScorers]):
    """Owns the scorer configuration in use."""

    what = "scorer configuration"
    operation = "scorers"
    absent = "no scorer configuration: nothing is scored until one is put"
    active_type = ActiveScorers

    def __init__(
        self,
        store: WholeDocuments[ScorerConfigRow],
        scoring: Scoring,
        metrics: Metrics,
        judging: Judging | None = None,
        judges: JudgeFactory | None = None,
    ) -> None:
        super().__init__(store, metrics)
        self._scoring = scoring
        self._judging = judging
        self._judge_factory = judges

    def read_seed(self, seed: str) -> str:
        """The seed configuration's text."""
        return read_scorer_source(seed)

    def prepare(self, source: str) -> tuple[ScorerConfig, Ready]:
        """Parse `source`, load its reward models and build its judges (in a worker thread)."""
        config = parse_scorer_config(source)
        judges = Judges.of(config, self._judge_factory) if self._judge_factory else None
        return config, (self._scoring.prepare(config), judges)

    def summary(self, document: ScorerConfig) -> dict[str, Any]:
        """Each route's scorer names."""
        return {
            route: [scorer.name for scorer in document.for_route(route)]
            for route in document.route_names()
        }

    def install(self, active: ActiveScorers, ready: Ready) -> None:
        """Hand the verifiers, reward models and judges to their workers."""
        prepared, judges = ready
        self._scoring.install(prepared)
        if self._judging is not None and judges is not None:
            self._judging.install(judges)
