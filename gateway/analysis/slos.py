"""The SLO file in use: seeded, replaced whole through the admin API and followed from the
registry. A bad file is refused with every problem listed, audited, and the one in use stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.analysis.slo import RouteSlo, SloFile, parse_slos, read_slo_source
from gateway.documents.holder import DocumentHolder, InUse
from gateway.metrics import Metrics
from gateway.registry.documents import WholeDocuments
from gateway.registry.schema import SloConfigRow


@dataclass(frozen=True)
class ActiveSlos(InUse[SloFile]):
    """The SLO file in use: its registry row id (0: a dry run), text and parsed form."""

    @property
    def file(self) -> SloFile:
        """The parsed file."""
        return self.document


class SloConfigs(DocumentHolder[SloFile, None, ActiveSlos]):
    """Owns the SLO file in use."""

    what = "SLO file"
    operation = "slos"
    absent = "no SLO file: rollouts are not analysed until one is put (PUT /admin/slos)"
    active_type = ActiveSlos

    def __init__(self, store: WholeDocuments[SloConfigRow], metrics: Metrics) -> None:
        super().__init__(store, metrics)

    def for_route(self, route: str) -> RouteSlo | None:
        """The route's SLOs in use (its own, else the defaults), or None."""
        active = self.active
        return active.file.for_route(route) if active else None

    def read_seed(self, seed: str) -> str:
        """The seed file's text."""
        return read_slo_source(seed)

    def prepare(self, source: str) -> tuple[SloFile, None]:
        """Parse and check `source`."""
        return parse_slos(source), None

    def summary(self, document: SloFile) -> dict[str, Any]:
        """Each route's signal names."""
        return {
            route: [signal.name for signal in slo.signals] for route, slo in document.routes.items()
        }
