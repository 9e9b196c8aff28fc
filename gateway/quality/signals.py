"""A rollout's quality signals per variant, read from the running aggregates."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from gateway.registry.quality import QualityStore, Totals

# The order variants are shown in: the two that serve, then the shadow stage's.
VARIANTS = ("stable", "canary", "shadow", "paired")


@dataclass(frozen=True)
class SignalSummary:
    """One signal of one variant: how many values, their mean and spread, passes and fails."""

    variant: str
    signal: str
    count: int
    mean: float | None
    sd: float | None
    passes: int
    fails: int

    @classmethod
    def of(cls, variant: str, signal: str, t: Totals) -> SignalSummary:
        mean = t.total / t.count if t.count else None
        sd = None
        if t.count > 1 and mean is not None:
            # Sample variance from the running sums (clamped: rounding can make it -1e-17).
            sd = math.sqrt(max(0.0, (t.total_sq - t.count * mean * mean) / (t.count - 1)))
        return cls(variant, signal, t.count, mean, sd, t.passes, t.fails)


async def summaries(store: QualityStore, rollout_id: int) -> list[SignalSummary]:
    """Every signal of a rollout, by signal then variant."""
    totals = await asyncio.to_thread(store.aggregates, rollout_id)
    order = {v: i for i, v in enumerate(VARIANTS)}
    keys = sorted(totals, key=lambda k: (k[1], order.get(k[0], len(order)), k[0]))
    return [
        SignalSummary.of(variant, signal, totals[(variant, signal)]) for variant, signal in keys
    ]
