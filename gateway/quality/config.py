"""Which scorers score a route's answers, and how often: the per-route scorer configuration.

A configuration is YAML (JSON is YAML too):

```yaml
sample_rate: 0.1          # share of a route's answered requests scored (default 0.1)
routes:
  french:                 # a route name (as in the route table; `default`: the base model)
    sample_rate: 1.0      # optional: the route's own default
    scorers:              # at most 32, names unique within the route
      - kind: language    # a verifier (gateway.quality.verifiers): json, json_schema,
        name: answer_is_french    # regex, length, refusal, language, caps_share
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

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from gateway.errors import InvalidScorerConfig
from gateway.quality.verifiers import (
    SCORER_NAME,
    AnyVerifierSpec,
    SpecBase,
    Verifier,
    VerifierSpecBase,
)
from gateway.routing.table import ROUTE_NAME

MAX_ROUTES: Final = 1000
MAX_SCORERS: Final = 32
DEFAULT_SAMPLE_RATE: Final = 0.1
DEMO_SCORERS: Final = "demo"
_MERGE: Final = "tag:yaml.org,2002:merge"


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


def _route_name(name: str) -> str:
    if not ROUTE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a route name (lower-case letters, digits, '_', '.', '-'; "
            "at most 63 characters)"
        )
    return name


RouteName = Annotated[str, AfterValidator(_route_name)]


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
    try:
        tree = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise InvalidScorerConfig([f"config: not valid YAML: {exc}".replace("\n", " ")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidScorerConfig(["config: must be a mapping (sample_rate, routes)"])
    # Pydantic checks a route's scorer names only once every scorer of the route is right:
    # they are read off the raw data so that a duplicate shows beside the other problems.
    problems = [*_repeated_keys(tree), *_duplicate_names(data)]
    try:
        spec = ScorerConfigSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidScorerConfig([*map(_describe, exc.errors()), *problems]) from exc
    if problems:
        raise InvalidScorerConfig(problems)
    return ScorerConfig.from_spec(spec, source)


def _repeated_keys(node: Any, where: str = "", seen: set[int] | None = None) -> Iterator[str]:
    # YAML keeps the last of a key written twice quietly: a route written twice would lose
    # its first scorers. Read off the composed nodes, where both are still there.
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already read
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _repeated_keys(item, f"{where}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        keys: set[tuple[str, str]] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            if (key.tag, key.value) in keys:
                line = key.start_mark.line + 1
                yield f"{where or 'config'}: {key.value!r} is written twice (again on line {line})"
            keys.add((key.tag, key.value))
            yield from _repeated_keys(value, f"{where}.{key.value}" if where else key.value, seen)


def _duplicate_names(data: dict[str, Any]) -> Iterator[str]:
    routes = data.get("routes")
    for route, entry in routes.items() if isinstance(routes, dict) else ():
        scorers = entry.get("scorers") if isinstance(entry, dict) else None
        first: dict[str, int] = {}
        for index, scorer in enumerate(scorers if isinstance(scorers, list) else ()):
            name = (scorer.get("name") or scorer.get("kind")) if isinstance(scorer, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                yield (
                    f"routes.{route}.scorers[{index}].name: {name!r} is scorers[{first[name]}]'s "
                    "name too (names are unique within a route: set `name`)"
                )
            else:
                first[name] = index


def _where(loc: tuple[int | str, ...]) -> str:
    where = ""
    for index, part in enumerate(loc):
        key = loc[index + 1 : index + 2] == ("[key]",)
        if isinstance(part, int) and not key:
            where += f"[{part}]"
        # A dict key's own error and the discriminated union's tag add no place.
        elif part == "[key]" or (
            index and isinstance(loc[index - 1], int) and part in SCORER_KINDS
        ):
            continue
        else:
            where += f".{part}" if where else str(part)
    return where or "config"


_NOT_A_MAPPING = ("model_type", "model_attributes_type", "dict_type")


def _describe(error: ErrorDetails) -> str:
    ctx = error.get("ctx", {})
    kinds = ", ".join(SCORER_KINDS)
    messages = {
        "value_error": str(ctx.get("error")),
        "union_tag_invalid": f"unknown kind {ctx.get('tag')!r} (kinds: {kinds})",
        "union_tag_not_found": f"kind is missing (kinds: {kinds})",
        "extra_forbidden": "unknown field",
        "list_type": "must be a list",
        **dict.fromkeys(_NOT_A_MAPPING, "must be a mapping"),
    }
    return f"{_where(error['loc'])}: {messages.get(error['type'], error['msg'])}"


def demo_scorers_path() -> Path:
    """The packaged demo configuration (verifiers for the demo adapters' routes)."""
    return Path(str(resources.files("gateway.quality").joinpath("demo_scorers.yaml")))


def read_scorer_source(where: str | Path) -> str:
    """A configuration's text from a path, or the demo configuration for `demo`."""
    path = demo_scorers_path() if str(where) == DEMO_SCORERS else Path(where)
    return path.read_text(encoding="utf-8")
