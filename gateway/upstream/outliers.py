"""Passive outlier detection for engine replicas, re-admission by the health probe.

Two ways out of rotation, after Envoy's outlier detection:

- **Unreachable** (a connection refused, or broken mid-answer): out at once. A request
  that found it so had not reached the engine and is sent to another replica. The replica
  comes back when its health probe passes again (and, as after any restart, once its
  adapters are restored).
- **A burst of failures** (`consecutive_failures` in a row of: answers with a 5xx status,
  read timeouts, connections reset before the engine sent a byte): out for
  `base_ejection_s` times the number of times it was ejected in a row (at most
  `max_ejection_s`), then back once a probe passes. Ejections stop while
  `max_ejection_percent` of the replicas are out this way, so a fault every replica shows
  (a bad request kind, say) cannot empty the pool. A replica back for longer than
  `max_ejection_s` starts again from one `base_ejection_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# Bounded label values of `gateway_upstream_ejections_total`.
EjectionReason = Literal["connect", "broken", "failures"]


@dataclass(frozen=True)
class OutlierPolicy:
    """When a replica leaves rotation on its own answers, and for how long."""

    consecutive_failures: int = 5
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 50.0


@dataclass
class OutlierState:
    """One replica's record: its failures in a row and its current ejection."""

    failures_in_row: int = 0
    # Ejections in a row (the multiplier of the next one).
    ejections: int = 0
    # Monotonic time until which the replica stays out; 0.0 when it is not ejected.
    ejected_until: float = 0.0
    readmitted_at: float = 0.0
    reason: EjectionReason | None = None

    def ejected(self, now: float) -> bool:
        """Whether a failure burst keeps the replica out at `now`."""
        return self.reason == "failures" and now < self.ejected_until

    def due(self, now: float) -> bool:
        """Whether a burst ejection has run its time (a passing probe brings it back)."""
        return self.reason == "failures" and now >= self.ejected_until


class OutlierDetector:
    """Counts each replica's failures and decides ejections (no I/O; the pool acts)."""

    def __init__(self, policy: OutlierPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock

    def now(self) -> float:
        """The detector's clock."""
        return self._clock()

    def success(self, state: OutlierState) -> None:
        """An answer below 500: the failures in a row start again."""
        state.failures_in_row = 0

    def failure(self, state: OutlierState, ejected_elsewhere: int, replicas: int) -> bool:
        """A 5xx answer or a read timeout; True when the replica is ejected now.

        `ejected_elsewhere`: replicas out for a failure burst already, of `replicas` in all."""
        state.failures_in_row += 1
        if state.reason is not None or state.failures_in_row < self.policy.consecutive_failures:
            return False
        if (ejected_elsewhere + 1) * 100.0 > self.policy.max_ejection_percent * replicas:
            return False
        now = self._clock()
        if state.readmitted_at and now - state.readmitted_at > self.policy.max_ejection_s:
            state.ejections = 0
        state.ejections += 1
        duration = min(self.policy.base_ejection_s * state.ejections, self.policy.max_ejection_s)
        state.ejected_until = now + duration
        state.reason = "failures"
        state.failures_in_row = 0
        return True

    def unreachable(self, state: OutlierState, reason: EjectionReason) -> bool:
        """The replica could not be reached; True when this takes it out (it was in)."""
        state.failures_in_row = 0
        if state.reason is not None and state.reason != "failures":
            return False
        state.reason = reason
        state.ejected_until = 0.0
        return True

    def readmit(self, state: OutlierState) -> EjectionReason | None:
        """A probe passed: clear the ejection; the reason it was out, if it was."""
        reason = state.reason
        if reason is not None:
            state.reason = None
            state.ejected_until = 0.0
            state.readmitted_at = self._clock()
        return reason
