"""Which scorers score a route's answers, and how often: the per-route scorer configuration.

A configuration is YAML (JSON is YAML too):

```yaml
sample_rate: 0.1          # share of a route's answered requests scored (default 0.1)
routes:
  french:                 # a route name (as in the route table; `default`: the base model)
    sample_rate: 1.0      # optional: the route's own default
    scorers:              # at most 32, names unique within the route
      - kind: language    # a verifier (gateway.quality.verifiers): json, json_schema,
        name: answer_is_french    # regex, length, refusal, language, caps_share, sql
        expect: fr
      - kind: judge       # an LLM judge, run elsewhere: only its spec here
        rubric: helpfulness
        rubric_version: 1
        mode: pointwise   # pairwise: scores shadow pairs only
        endpoint: null    # an OpenAI-compatible base URL; null: the gateway itself
        model: null       # null: the base model
        sample_rate: 0.05
      - kind: reward      # a reward model: builtin, or http with its url
        model: builtin
```

A scorer's sample rate is its own, else its route's, else the configuration's.
`parse_scorer_config` checks everything at once, the verifiers' regexes, JSON schemas and
language codes included, and raises `InvalidScorerConfig` listing every problem, each
prefixed by where it is (`routes.french.scorers[2].expect: ...`). Route names are not
checked against the route table here: a route may be configured before it exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from gateway.documents.checking import (
    RouteName,
    check_document,
    read_source,
    repeated_names,
    route_lists,
)
from gateway.errors import InvalidScorerConfig
from gateway.quality.verdict import SCORER_NAME, SpecBase, Verifier, VerifierSpecBase
from gateway.quality.verifiers import AnyVerifierSpec

MAX_ROUTES: Final = 1000
MAX_SCORERS: Final = 32
DEFAULT_SAMPLE_RATE: Final = 0.1


def _web_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


WebUrl = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_web_url)]


class JudgeSpec(SpecBase):
    """`judge`: an LLM grades answers by a versioned rubric (the judge runs elsewhere)."""

    kind: Literal["judge"] = "judge"
    rubric: str = Field(pattern=SCORER_NAME.pattern)
    # Pinned so that scores from different wordings of a rubric are never averaged together.
    rubric_version: int = Field(default=1, ge=1)
    # pairwise: compares a rollout's shadow pairs, so it scores those only.
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    # An OpenAI-compatible base URL; None: the gateway itself.
    endpoint: WebUrl | None = None
    # None: the base model.
    model: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _known_rubric(self) -> JudgeSpec:
        # Imported here: the judge module imports this one.
        from gateway.quality.judge import load_rubric

        load_rubric(self.rubric, self.rubric_version)  # a RubricError is a ValueError
        return self


class RewardSpec(SpecBase):
    """`reward`: a reward model scores answers: a `builtin` head (trained by `lora-gateway
    reward train` into the reward directory, named by `head`) or one served at `url`."""

    kind: Literal["reward"] = "reward"
    model: Literal["builtin", "http"] = "builtin"
    # builtin: the head's directory name under the gateway's reward directory.
    head: str | None = Field(default=None, pattern=SCORER_NAME.pattern)
    # http: the server's root (vLLM's `/score` is under it) and the model it serves.
    url: WebUrl | None = None
    served_model: str | None = Field(default=None, min_length=1, max_length=200)
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _fields_of_the_model(self) -> RewardSpec:
        if self.model == "http":
            if self.url is None:
                raise ValueError("url is required when model is http")
            if self.head is not None:
                raise ValueError("head is only for model builtin")
        else:
            if self.url is not None or self.served_model is not None:
                raise ValueError("url and served_model are only for model http")
            if self.head is None:
                raise ValueError("head is required when model is builtin (a trained head's name)")
        return self


ScorerSpec = Annotated[AnyVerifierSpec | JudgeSpec | RewardSpec, Field(discriminator="kind")]
SCORER_KINDS: Final = tuple(
    str(spec.model_fields["kind"].default)
    for spec in (*get_args(AnyVerifierSpec), JudgeSpec, RewardSpec)
)


class RouteScorers(BaseModel):
    """One route's scorers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    scorers: list[ScorerSpec] = Field(default_factory=list, max_length=MAX_SCORERS)


class ScorerConfigSpec(BaseModel):
    """The configuration's parsed form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: float = Field(default=DEFAULT_SAMPLE_RATE, ge=0.0, le=1.0)
    routes: dict[RouteName, RouteScorers] = Field(default_factory=dict, max_length=MAX_ROUTES)


@dataclass(frozen=True, slots=True)
class BuiltScorer:
    """One scorer of one route, ready to run: its spec, its effective sample rate and, for
    a verifier, the verifier (judges and reward models are run by their own workers)."""

    route: str
    spec: SpecBase
    sample_rate: float
    verifier: Verifier | None

    @property
    def name(self) -> str:
        """The name its scores are stored under."""
        return self.spec.scorer_name

    @property
    def kind(self) -> str:
        """The scorer's kind (`language`, `judge`, ...)."""
        return self.spec.kind


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """A checked scorer configuration: its source text as written (comments and all, for
    storage), its parsed form and every route's scorers, verifiers built."""

    source: str
    spec: ScorerConfigSpec
    scorers: Mapping[str, tuple[BuiltScorer, ...]]

    @classmethod
    def from_spec(cls, spec: ScorerConfigSpec, source: str) -> ScorerConfig:
        """Build every route's scorers once."""
        scorers = {
            route: tuple(_built(route, scorer, entry, spec) for scorer in entry.scorers)
            for route, entry in spec.routes.items()
        }
        return cls(source, spec, scorers)

    def route_names(self) -> list[str]:
        """The configured routes, in the order written."""
        return list(self.scorers)

    def for_route(self, route: str) -> list[BuiltScorer]:
        """A route's scorers (none for a route not configured)."""
        return list(self.scorers.get(route, ()))

    def sampled(self, route: str, draw: float) -> list[BuiltScorer]:
        """The route's scorers that score an answer whose uniform draw in [0, 1) is `draw`."""
        return [scorer for scorer in self.scorers.get(route, ()) if draw < scorer.sample_rate]


def _built(
    route: str, scorer: SpecBase, entry: RouteScorers, spec: ScorerConfigSpec
) -> BuiltScorer:
    rate = next(
        r for r in (scorer.sample_rate, entry.sample_rate, spec.sample_rate) if r is not None
    )
    verifier = scorer.build() if isinstance(scorer, VerifierSpecBase) else None
    return BuiltScorer(route, scorer, rate, verifier)


def parse_scorer_config(source: str) -> ScorerConfig:
    """Parse and check a configuration's text; raise `InvalidScorerConfig` listing every
    problem. An empty document (or one of comments only) configures no scorer."""
    spec = check_document(
        source,
        ScorerConfigSpec,
        error=InvalidScorerConfig,
        fields="sample_rate, routes",
        checks=_duplicate_names,
        kinds=SCORER_KINDS,
    )
    return ScorerConfig.from_spec(spec, source)


def _duplicate_names(data: dict[str, Any]) -> Iterator[str]:
    # Pydantic checks a route's scorer names only once every scorer of the route is right:
    # they are read off the raw data so that a duplicate shows beside the other problems.
    return repeated_names(
        route_lists(data, "scorers"),
        _scorer_name,
        field="name",
        hint="names are unique within a route: set `name`",
    )


def _scorer_name(scorer: Any) -> str | None:
    name = (scorer.get("name") or scorer.get("kind")) if isinstance(scorer, dict) else None
    return name if isinstance(name, str) else None


def demo_scorers_path() -> Path:
    """The packaged demo configuration (verifiers for the demo adapters' routes)."""
    return Path(str(resources.files("gateway.quality").joinpath("demo_scorers.yaml")))


def read_scorer_source(where: str | Path) -> str:
    """A configuration's text from a path, or the demo configuration for `demo`."""
    return read_source(where, demo_scorers_path())
