"""Each route's SLOs (service-level objectives): what rollout analysis holds a candidate
version to, signal by signal, against the route's stable version.

An SLO file is YAML (JSON is YAML too):

```yaml
defaults:                     # optional: every route without an entry under `routes`
  signals:
    - {signal: error_rate, critical: true, margin: 0.01}
routes:
  pirate:                     # a route name (as in the route table)
    analysis:                 # optional, each field too
      alpha: 0.05             # the rollout's family-wise error, split across its signals
      on_fail: rollback       # or pause
      on_inconclusive: pause  # or rollback: a step out of time without a verdict
      max_step_duration_s: 3600
      noncritical_failures: 2 # failing non-critical signals that trip the rollout
      dry_run: false          # verdicts computed, recorded and shown; no action taken
    signals:                  # 1 to 32, names unique within the route
      - signal: error_rate    # what is measured (`SignalKind`)
        critical: true        # trips the rollout alone
        margin: 0.01          # the candidate-minus-stable change allowed in the bad direction
        ceiling: {value: 0.5, min_samples: 10}    # trips at once, whatever the test says
      - {signal: verifier_pass, scorer: pirate_voice, margin: -0.1, min: 0.5}
      - {signal: reward_mean, margin: "-10%"}     # relative to the stable version's value
```

A margin is written with its sign: at most 0 for a signal where higher is better, at least
0 where lower is better. `parse_slos` checks everything at once and raises
`InvalidSloConfig` listing every problem with where it is
(`routes.pirate.signals[1].margin: ...`). Routes and scorers are not checked against the
route table or the scorer configuration: either may be written before the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    model_validator,
)

from gateway.documents.checking import (
    FieldProblems,
    RouteName,
    check_document,
    read_source,
    repeated_names,
    route_lists,
)
from gateway.errors import InvalidSloConfig
from gateway.quality.verdict import SCORER_NAME

MAX_ROUTES: Final = 1000
MAX_SIGNALS: Final = 32
MAX_SAMPLES: Final = 10_000_000
MAX_STEP_DURATION_S: Final = 30 * 86_400.0
# `KindInfo.scorer` of a signal that names its scorer itself.
REQUIRED: Final = "required"

Direction = Literal["higher", "lower"]
Unit = Literal["rate", "ms", "score"]
Action = Literal["rollback", "pause"]


class SignalKind(StrEnum):
    """What a signal measures, per variant of a rollout."""

    ERROR_RATE = "error_rate"  # share of answers that are 5xx
    LATENCY_P95 = "latency_p95"  # 95th percentile of answered requests' latency
    TTFT_P95 = "ttft_p95"  # 95th percentile of streams' time to first token
    VERIFIER_PASS = "verifier_pass"  # pass rate of one verifier
    JUDGE_WIN_RATE = "judge_win_rate"  # the LLM judge's win rate (pairwise) or grade
    REWARD_MEAN = "reward_mean"  # mean reward-model score
    SATISFACTION_RATE = "satisfaction_rate"  # share of positive user ratings


@dataclass(frozen=True, slots=True)
class KindInfo:
    """How a kind of signal reads: which way is better, its unit (`rate` in [0, 1], `ms`,
    `score`), its scorer (`REQUIRED`, a default scorer name, or None: it takes none), whether
    a margin may be relative, and whether its direction is fixed."""

    direction: Direction
    unit: Unit
    scorer: str | None = None
    relative_margin_ok: bool = False
    direction_fixed: bool = True


KINDS: Final[dict[SignalKind, KindInfo]] = {
    SignalKind.ERROR_RATE: KindInfo("lower", "rate"),
    SignalKind.LATENCY_P95: KindInfo("lower", "ms", relative_margin_ok=True),
    SignalKind.TTFT_P95: KindInfo("lower", "ms", relative_margin_ok=True),
    SignalKind.VERIFIER_PASS: KindInfo("higher", "rate", REQUIRED),
    SignalKind.JUDGE_WIN_RATE: KindInfo("higher", "rate", "judge"),
    # A reward model may score a cost, where lower is better.
    SignalKind.REWARD_MEAN: KindInfo(
        "higher", "score", "reward", relative_margin_ok=True, direction_fixed=False
    ),
    SignalKind.SATISFACTION_RATE: KindInfo("higher", "rate"),
}
_KIND_NAMES: Final = tuple(str(kind) for kind in SignalKind)
_FROZEN = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True, slots=True)
class Margin:
    """A non-inferiority margin: absolute (`0.01`, in the signal's unit) or relative to the
    stable version's value (`"-10%"`: value -0.10)."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, written: object) -> Margin:
        """A margin from a number (absolute) or a percentage string (relative)."""
        if isinstance(written, Margin):
            return written
        if isinstance(written, int | float) and not isinstance(written, bool):
            margin = cls(float(written))
        elif isinstance(written, str) and written.strip().endswith("%"):
            try:
                margin = cls(float(written.strip()[:-1]) / 100, relative=True)
            except ValueError:
                raise ValueError(f"{written!r} is not a percentage such as '-10%'") from None
        else:
            raise ValueError(
                f"must be a number (absolute) or a percentage such as '-10%' (got {written!r})"
            )
        if not math.isfinite(margin.value):
            raise ValueError(f"must be finite (got {written!r})")
        return margin

    def written(self) -> float | str:
        """The margin as an SLO file writes it."""
        return f"{self.value * 100:+g}%" if self.relative else self.value

    def __str__(self) -> str:
        return str(self.written()) if self.relative else f"{self.value:g}"


MarginField = Annotated[
    Margin, PlainValidator(Margin.parse), PlainSerializer(Margin.written, return_type=Any)
]


def _known_signal(value: object) -> object:
    if isinstance(value, str) and value in _KIND_NAMES:
        return SignalKind(value)
    raise ValueError(f"unknown signal kind {value!r} (kinds: {', '.join(_KIND_NAMES)})")


def signal_name(kind: SignalKind, scorer: str | None) -> str | None:
    """A signal's name: `kind`, or `kind:scorer` for a kind that reads a scorer (its default
    scorer when `scorer` is None); None when the kind needs a scorer and has none."""
    default = KINDS[kind].scorer
    if default is None:
        return str(kind)
    chosen = scorer or (None if default == REQUIRED else default)
    return f"{kind}:{chosen}" if chosen else None


class Ceiling(BaseModel):
    """A hard limit: at or beyond `value` (≥ where lower is better, ≤ where higher is) over at
    least `min_samples` of the candidate's samples, the signal trips at once."""

    model_config = _FROZEN

    value: float
    min_samples: int = Field(default=10, ge=1, le=MAX_SAMPLES)


class SignalSlo(BaseModel):
    """One signal's objective on a route."""

    model_config = _FROZEN

    signal: Annotated[SignalKind, BeforeValidator(_known_signal)]
    # The scorer whose results are read (see `KINDS`); verifier_pass names its verifier.
    scorer: str | None = Field(default=None, pattern=SCORER_NAME.pattern)
    # None: the kind's own (only reward_mean's may be changed).
    direction: Direction | None = None
    margin: MarginField
    # Absolute bounds on the candidate's value.
    min: float | None = None
    max: float | None = None
    # A failing critical signal trips the rollout alone.
    critical: bool = False
    # Samples per variant before the signal's tests count.
    min_samples: int = Field(default=30, ge=1, le=MAX_SAMPLES)
    # The signal's share of the route's alpha.
    weight: float = Field(default=1.0, gt=0, le=100)
    ceiling: Ceiling | None = None
    # The signal's verdicts are shown, never acted on.
    dry_run: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SignalSlo:
        problems = list(_signal_problems(self))
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def info(self) -> KindInfo:
        """How the signal's kind reads."""
        return KINDS[self.signal]

    @property
    def resolved_direction(self) -> Direction:
        """Which way is better: the one written, else the kind's."""
        return self.direction or self.info.direction

    @property
    def resolved_scorer(self) -> str | None:
        """The scorer read: the one written, else the kind's default (None: it reads none)."""
        default = self.info.scorer
        if default is None:
            return None
        return self.scorer or (None if default == REQUIRED else default)

    @property
    def name(self) -> str:
        """`signal`, or `signal:scorer` (`verifier_pass:pirate_voice`, `reward_mean:reward`)."""
        return signal_name(self.signal, self.scorer) or str(self.signal)


def _signal_problems(slo: SignalSlo) -> Iterator[tuple[str, str]]:
    kind, info = slo.signal, slo.info
    if info.scorer == REQUIRED and slo.scorer is None:
        yield "scorer", f"{kind} needs `scorer`: a verifier's name in the route's scorers"
    if info.scorer is None and slo.scorer is not None:
        yield "scorer", f"{kind} takes no scorer"
    if info.direction_fixed and slo.direction not in (None, info.direction):
        yield "direction", f"{kind} is {info.direction}-is-better: its direction is fixed"
    # A contradicting direction is reported above: the kind's own is checked against.
    direction = info.direction if info.direction_fixed else slo.resolved_direction
    yield from (("margin", problem) for problem in _margin_problems(slo, direction))
    yield from _bound_problems(slo)
    if slo.ceiling is not None:
        yield from (("ceiling.value", p) for p in _ceiling_problems(slo, slo.ceiling, direction))


def _margin_problems(slo: SignalSlo, direction: Direction) -> Iterator[str]:
    kind, info, margin = slo.signal, slo.info, slo.margin
    if direction == "higher" and margin.value > 0:
        yield f"{kind} is higher-is-better: its margin must be ≤ 0 (got {margin})"
    if direction == "lower" and margin.value < 0:
        yield f"{kind} is lower-is-better: its margin must be ≥ 0 (got {margin})"
    if margin.relative and not info.relative_margin_ok:
        takers = ", ".join(k for k, i in KINDS.items() if i.relative_margin_ok)
        yield f"{kind} takes an absolute margin (relative ones are for {takers}; got {margin})"
    if info.unit == "rate" and not margin.relative and abs(margin.value) > 1:
        yield f"{kind} is a rate in [0, 1]: its margin must be within ±1 (got {margin})"


def _out_of_range(info: KindInfo, value: float) -> str | None:
    if info.unit == "rate" and not 0 <= value <= 1:
        return "a rate: it must be in [0, 1]"
    if info.unit == "ms" and value < 0:
        return "in milliseconds: it must be ≥ 0"
    return None


def _bound_problems(slo: SignalSlo) -> Iterator[tuple[str, str]]:
    for field, value in (("min", slo.min), ("max", slo.max)):
        wrong = None if value is None else _out_of_range(slo.info, value)
        if wrong:
            yield field, f"{slo.signal} is {wrong} (got {value:g})"
    if slo.min is not None and slo.max is not None and slo.min > slo.max:
        yield "", f"impossible bounds: min {slo.min:g} is above max {slo.max:g}"


def _ceiling_problems(slo: SignalSlo, ceiling: Ceiling, direction: Direction) -> Iterator[str]:
    value = ceiling.value
    wrong = _out_of_range(slo.info, value)
    if wrong:
        yield f"{slo.signal} is {wrong} (got {value:g})"
    # A ceiling on the good side of a bound would trip a candidate the bound accepts.
    if direction == "lower" and slo.max is not None and value < slo.max:
        yield f"a ceiling below max ({slo.max:g}) trips what the bound accepts (got {value:g})"
    if direction == "higher" and slo.min is not None and value > slo.min:
        yield f"a ceiling above min ({slo.min:g}) trips what the bound accepts (got {value:g})"


class AnalysisSpec(BaseModel):
    """How a route's rollouts are judged and what their verdicts do."""

    model_config = _FROZEN

    # The family-wise error of the rollout, split across its signals by weight.
    alpha: float = Field(default=0.05, gt=0, le=0.2)
    on_fail: Action = "rollback"
    # What a step that waited `max_step_duration_s` past its minimums without a verdict does.
    on_inconclusive: Action = "pause"
    max_step_duration_s: float = Field(default=3600.0, gt=0, le=MAX_STEP_DURATION_S)
    # That many failing non-critical signals trip the rollout.
    noncritical_failures: int = Field(default=2, ge=1, le=MAX_SIGNALS)
    # Verdicts are computed, recorded and shown; no action is taken.
    dry_run: bool = False
    # The reward-hacking alarm: a reward or judge signal significantly up while a
    # satisfaction or verifier signal is significantly down, each tested at this alpha.
    alarm_alpha: float = Field(default=0.05, gt=0, le=0.2)
    # `alert`: an audit event, a metric and a webhook; `pause`: the same, and the rollout
    # is paused for an operator to look.
    on_alarm: Literal["alert", "pause"] = "alert"


class RouteSlo(BaseModel):
    """One route's SLOs: how its rollouts are analysed, and its signals."""

    model_config = _FROZEN

    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    signals: list[SignalSlo] = Field(min_length=1, max_length=MAX_SIGNALS)

    def alpha_of(self, signal: SignalSlo) -> float:
        """The signal's share of the route's alpha (by weight)."""
        return self.analysis.alpha * signal.weight / sum(s.weight for s in self.signals)


class SloFile(BaseModel):
    """A checked SLO file: its parsed form and its text as written (comments and all)."""

    model_config = _FROZEN

    defaults: RouteSlo | None = None
    routes: dict[RouteName, RouteSlo] = Field(default_factory=dict, max_length=MAX_ROUTES)
    _source: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _not_empty(self) -> SloFile:
        if self.defaults is None and not self.routes:
            raise ValueError("an SLO file needs `defaults`, `routes` or both")
        return self

    @property
    def source(self) -> str:
        """The file as written."""
        return self._source

    def for_route(self, route: str) -> RouteSlo | None:
        """The route's own SLOs, else the defaults, else None."""
        return self.routes.get(route, self.defaults)


def parse_slos(source: str) -> SloFile:
    """Parse and check an SLO file's text; raise `InvalidSloConfig` listing every problem."""
    slos = check_document(
        source, SloFile, error=InvalidSloConfig, fields="defaults, routes", checks=_duplicates
    )
    slos._source = source
    return slos


def _duplicates(data: dict[str, Any]) -> Iterator[str]:
    # Read off the raw data: pydantic reaches a route's list as a whole only once every
    # signal in it is right.
    defaults = data.get("defaults")
    lists = [
        *([("defaults.signals", defaults.get("signals"))] if isinstance(defaults, dict) else []),
        *route_lists(data, "signals"),
    ]
    hint = "names are unique within a route: `scorer` tells signals of one kind apart"
    return repeated_names(lists, _raw_name, field="signal", hint=hint)


def _raw_name(item: Any) -> str | None:
    kind = item.get("signal") if isinstance(item, dict) else None
    if not isinstance(kind, str) or kind not in _KIND_NAMES:
        return None
    scorer = item.get("scorer")
    return signal_name(SignalKind(kind), scorer if isinstance(scorer, str) else None)


def demo_slos_path() -> Path:
    """The packaged demo SLO file (for the demo adapters' routes)."""
    return Path(str(resources.files("gateway.analysis").joinpath("demo_slos.yaml")))


def read_slo_source(seed: str | Path) -> str:
    """An SLO file's text from a path, or the demo file for `demo`."""
    return read_source(seed, demo_slos_path())
