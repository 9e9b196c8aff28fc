"""The route table of `model: "auto"`: which routes exist, what each serves, how to spot it.

A table is YAML (JSON is YAML too):

```yaml
method: head             # head: a learned classifier over the embeddings (probabilities);
                         # knn: mean of the k best utterance similarities; centroid
threshold: 0.58          # a route must score at least this much (routes may override)
rule_floor: 0.3          # a keyword or pattern counts only if its route scores this much
head: {c: 4.0, background: builtin, lexical: 2.0, words: 1.0}   # n-grams' weights
context: {turns: 3}      # earlier user turns a follow-up is read with (0, the default: none)
default:                 # everything else: the base model, no adapter
  name: default
  utterances: [...]      # optional: examples of what belongs to the base model
routes:
  - name: pirate
    adapter: pirate      # an adapter name (its stable version) or `name@version`
    description: The sea and seafaring.     # optional; an example too
    keywords: [ahoy]     # whole words or phrases, any case
    patterns: ['\\btalk like a pirate\\b']   # regexes, searched case-insensitively
    negatives: ['\\bpirate radio\\b']        # when one matches, the route is ruled out
    utterances: [...]    # example requests (at least one)
```

`parse_table` checks the shape (types, ranges, empty utterances), then, once the shape is
right, what needs no other state (duplicate names, regexes, contradictory utterances);
`check_adapters` checks the adapters against the catalogue. Each stage reports every
problem it finds at once, in one `InvalidRouteTable` error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.catalog import ModelCatalog
from gateway.errors import InvalidRouteTable, ModelNotFound

ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
AUTO_MODEL = "auto"
DEMO_TABLE = "demo"
# At most this many characters of a request are matched against rules.
RULE_TEXT_CHARS = 4000
Method = Literal["head", "knn", "centroid"]


def _clean_texts(values: list[str]) -> list[str]:
    cleaned = [v.strip() for v in values]
    if any(not v for v in cleaned):
        raise ValueError("must not contain empty strings")
    return cleaned


class RouteSpec(BaseModel):
    """One route: a name clients see in `x-route`, the adapter it serves, how to spot it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ROUTE_NAME.pattern)
    adapter: str = Field(min_length=1, max_length=140)
    # What belongs to the route, in a sentence; the head learns it as one more example.
    description: str | None = Field(default=None, max_length=1000)
    utterances: list[str] = Field(min_length=1, max_length=5000)
    keywords: list[str] = Field(default_factory=list, max_length=500)
    patterns: list[str] = Field(default_factory=list, max_length=100)
    # Regexes: when one matches, the route is ruled out (its rules and its score).
    negatives: list[str] = Field(default_factory=list, max_length=200)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)

    _texts = field_validator("utterances", "keywords", "patterns", "negatives")(_clean_texts)

    @field_validator("description")
    @classmethod
    def _described(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it out instead)")
        return None if value is None else value.strip()

    def examples(self) -> list[str]:
        """What the route is learned from: its utterances, and its description if any."""
        return [*self.utterances, *([self.description] if self.description else [])]


class DefaultRoute(BaseModel):
    """Where everything else goes: the base model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", pattern=ROUTE_NAME.pattern)
    utterances: list[str] = Field(default_factory=list, max_length=5000)

    _texts = field_validator("utterances")(_clean_texts)


class HeadSpec(BaseModel):
    """The learned head (`method: head`): one multinomial logistic regression over the
    embeddings, one class per route plus the default's (and a follow-up class when the
    table reads context)."""

    model_config = ConfigDict(extra="forbid")

    # Inverse L2 regularisation strength (scikit-learn's C).
    c: float = Field(default=4.0, gt=0.0, le=1000.0)
    # `builtin`: the packaged generic prompts join the default route's utterances.
    background: Literal["builtin", "none"] = "builtin"
    # Weight of the text's character n-grams beside its embedding (0: the embedding only).
    lexical: float = Field(default=0.0, ge=0.0, le=10.0)
    # Weight of its words and word pairs, relative to the character n-grams (0: none).
    words: float = Field(default=0.0, ge=0.0, le=10.0)


class ContextSpec(BaseModel):
    """How a chat's earlier user turns help classify a follow-up."""

    model_config = ConfigDict(extra="forbid")

    # Earlier user turns read with a follow-up (0: only the last message counts).
    turns: int = Field(default=3, ge=0, le=10)
    # Weight of the turn before the last message against the last message's 1, halving
    # per turn further back.
    weight: float = Field(default=1.5, gt=0.0, le=4.0)
    # The topic counts as changed when the last message alone is the default route's with
    # at least this probability: then the conversation is not read.
    switch: float = Field(default=0.8, gt=0.0, le=1.0)
    # Regexes (case-insensitive) of a message announcing a change of topic ("unrelated,
    # but ..."): when one matches, the conversation is not read either. None: the builtin
    # English list (`TOPIC_BREAKS`); []: none.
    breaks: list[str] | None = Field(default=None, max_length=100)

    def topic_breaks(self) -> list[str]:
        """The topic-change regexes in effect."""
        return list(TOPIC_BREAKS) if self.breaks is None else self.breaks


# Phrases that announce a new topic. Kept to unambiguous ones: "by the way" or "another
# thing" often introduce a follow-up of the same topic.
TOPIC_BREAKS = (
    r"\b(unrelated|off[- ]topic|random question|totally different|on another note)\b",
    r"\b(different|new|separate|another) (question|topic|subject)\b",
    r"\b(switch(ing)?|chang(e|ing)) (gears|topics?|subjects?)\b",
    r"\bchange of (topic|subject)\b",
)


class RouteTable(BaseModel):
    """A whole, validated route table."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.45, ge=-1.0, le=1.0)
    method: Method = "knn"
    k: int = Field(default=3, ge=1, le=50)
    # A keyword or pattern of a route counts only when the route's score reaches this.
    rule_floor: float | None = Field(default=None, ge=-1.0, le=1.0)
    head: HeadSpec = Field(default_factory=HeadSpec)
    context: ContextSpec = Field(default_factory=lambda: ContextSpec(turns=0))
    default: DefaultRoute = Field(default_factory=DefaultRoute)
    routes: list[RouteSpec] = Field(min_length=1, max_length=200)

    def threshold_of(self, route: RouteSpec) -> float:
        """The score `route` must reach."""
        return self.threshold if route.threshold is None else route.threshold

    def route(self, name: str) -> RouteSpec:
        """One route by name."""
        for route in self.routes:
            if route.name == name:
                return route
        raise KeyError(name)


def parse_table(source: str) -> RouteTable:
    """Parse and check a table's text; raise `InvalidRouteTable` listing every problem."""
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise InvalidRouteTable([f"not valid YAML: {exc}".replace("\n", " ")]) from exc
    if not isinstance(data, dict):
        raise InvalidRouteTable(["the table must be a mapping with a `routes` list"])
    try:
        table = RouteTable.model_validate(data)
    except ValidationError as exc:
        raise InvalidRouteTable([_describe(error) for error in exc.errors()]) from exc
    problems = list(_consistency_problems(table))
    if problems:
        raise InvalidRouteTable(problems)
    return table


def _describe(error: object) -> str:
    assert isinstance(error, dict)
    where = ".".join(str(part) for part in error["loc"]) or "table"
    return f"{where}: {error['msg']}"


def _consistency_problems(table: RouteTable) -> Iterable[str]:
    if table.context.turns and table.method != "head":
        yield "context: reading earlier turns needs method head (set context.turns: 0)"
    if table.head.words > 0.0 and table.head.lexical == 0.0:
        yield "head: words weighs the word n-grams relative to lexical, which is 0 (set both)"
    if table.method == "head":
        scores = [("threshold", table.threshold), ("rule_floor", table.rule_floor)]
        scores += [(f"route {r.name!r}: threshold", r.threshold) for r in table.routes]
        for where, value in scores:
            if value is not None and value < 0.0:
                yield f"{where}: {value} is not a probability (method head scores in [0, 1])"
    names = Counter([table.default.name, *(r.name for r in table.routes)])
    for name, count in names.items():
        if count > 1:
            yield f"route name {name!r} is used {count} times (the default route counts)"
    for pattern in table.context.breaks or []:
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            yield f"context: break {pattern!r} is not a valid regex: {exc}"
    for route in table.routes:
        for kind, patterns in (("pattern", route.patterns), ("negative", route.negatives)):
            for pattern in patterns:
                try:
                    re.compile(pattern, re.IGNORECASE)
                except re.error as exc:
                    yield f"route {route.name!r}: {kind} {pattern!r} is not a valid regex: {exc}"
    owners: dict[str, tuple[str, set[str]]] = {}
    for route_name, texts in [
        (table.default.name, table.default.utterances),
        *((r.name, r.examples()) for r in table.routes),
    ]:
        for text in texts:
            owners.setdefault(text.casefold(), (text, set()))[1].add(route_name)
    for text, routes in owners.values():
        if len(routes) > 1:
            yield f"utterance {text!r} is an example of several routes: {', '.join(sorted(routes))}"


def check_adapters(table: RouteTable, catalog: ModelCatalog) -> None:
    """Refuse a table whose routes name adapters the catalogue does not serve."""
    problems: list[str] = []
    for route in table.routes:
        if route.adapter in (AUTO_MODEL, catalog.base_model):
            problems.append(
                f"route {route.name!r}: adapter {route.adapter!r} is not an adapter "
                "(the default route serves the base model)"
            )
            continue
        try:
            catalog.resolve(route.adapter)
        except ModelNotFound:
            known = ", ".join(sorted({v.name for v in catalog.adapter_versions()})) or "none"
            problems.append(
                f"route {route.name!r}: adapter {route.adapter!r} is not registered or not "
                f"servable (servable adapters: {known})"
            )
    if problems:
        raise InvalidRouteTable(problems)


def demo_table_path() -> Path:
    """The packaged demo table (routes to the demo adapters)."""
    return Path(str(resources.files("gateway.routing").joinpath("demo", "routes.yaml")))


def demo_tuning_path() -> Path:
    """The demo table's labelled tuning set (thresholds are chosen on it)."""
    return Path(str(resources.files("gateway.routing").joinpath("demo", "tuning.jsonl")))


def demo_test_path() -> Path:
    """The demo table's labelled test set: written apart from the table, never tuned on."""
    return Path(str(resources.files("gateway.routing").joinpath("demo", "test.jsonl")))


def read_table_source(where: str | Path) -> str:
    """A table's text from a path, or the demo table for `demo`."""
    path = demo_table_path() if str(where) == DEMO_TABLE else Path(where)
    return path.read_text(encoding="utf-8")
