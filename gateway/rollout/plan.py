"""A rollout's plan: how much shadow traffic for how long, then which canary weights.

```yaml
shadow: {sample_rate: 1.0, min_samples: 20, min_duration_s: 0}
canary:
  - {weight: 1, min_samples: 50}
  - {weight: 5, min_samples: 50}
  - {weight: 25, min_samples: 100}
  - {weight: 50, min_samples: 100}
  - {weight: 100, min_samples: 100}
```

The minimums gate `advance` and `promote` (an operator may force past them); the weights
must rise strictly within (0, 100].
"""

from __future__ import annotations

import itertools
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import InvalidRequest
from gateway.registry.rollouts import SHADOW_STEP

# Weights are kept in percent; buckets are basis points (1/100 of a percent).
BUCKETS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShadowPlan(_Strict):
    """The shadow stage: the share of the route's requests copied to the candidate."""

    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    min_samples: int = Field(default=0, ge=0, le=10_000_000)
    min_duration_s: float = Field(default=0.0, ge=0.0, le=30 * 86_400)


class CanaryStep(_Strict):
    """One canary step: the candidate's share of the route's requests, in percent."""

    weight: float = Field(gt=0.0, le=100.0)
    min_samples: int = Field(default=0, ge=0, le=10_000_000)
    min_duration_s: float = Field(default=0.0, ge=0.0, le=30 * 86_400)

    @property
    def buckets(self) -> int:
        """The buckets on the canary: [0, buckets)."""
        return round(self.weight * BUCKETS / 100)


DEFAULT_STEPS = (1.0, 5.0, 25.0, 50.0, 100.0)


class RolloutPlan(_Strict):
    """Shadow, then canary steps of strictly rising weight."""

    shadow: ShadowPlan = Field(default_factory=ShadowPlan)
    canary: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=w) for w in DEFAULT_STEPS],
        min_length=1,
        max_length=50,
    )

    @model_validator(mode="after")
    def _rising(self) -> Self:
        weights = [step.weight for step in self.canary]
        for before, after in itertools.pairwise(weights):
            if after <= before:
                raise ValueError(f"canary weights must rise strictly; {after} follows {before}")
        buckets = [step.buckets for step in self.canary]
        if len(set(buckets)) != len(buckets) or buckets[0] < 1:
            raise ValueError("canary weights must differ by at least 0.01 (one bucket)")
        return self


def parse_plan(raw: Any) -> RolloutPlan:
    """Validate a plan as the admin API received it; every problem in one 400."""
    if raw is None:
        return RolloutPlan()
    try:
        return RolloutPlan.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
        first = exc.errors()[0]["loc"]
        param = "plan." + ".".join(str(p) for p in first) if first else "plan"
        raise InvalidRequest(
            "invalid rollout plan: " + "; ".join(problems), param=param, code="invalid_plan"
        ) from exc


def step_name(step: int, canary: list[dict[str, Any]]) -> str:
    """How a step is shown: `shadow`, or `canary 2 (5%)` with the weight from the plan."""
    if step == SHADOW_STEP:
        return "shadow"
    weight = canary[step]["weight"] if 0 <= step < len(canary) else "?"
    return f"canary {step + 1} ({weight}%)"
