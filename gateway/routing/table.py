"""The route table of `model: "auto"`: which routes exist, what each serves, how to spot it.

A table is YAML (JSON is YAML too):

```yaml
threshold: 0.45          # a route must score at least this much (routes may override)
method: knn              # knn: mean of the k best utterance similarities; centroid
k: 3
default:                 # everything else: the base model, no adapter
  name: default
  utterances: [...]      # optional: examples of what belongs to the base model
routes:
  - name: pirate
    adapter: pirate      # an adapter name (its stable version) or `name@version`
    keywords: [ahoy]     # whole words or phrases, any case
    patterns: ['\\btalk like a pirate\\b']   # regexes, searched case-insensitively
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
Method = Literal["knn", "centroid"]


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
    description: str = ""
    utterances: list[str] = Field(min_length=1, max_length=2000)
    keywords: list[str] = Field(default_factory=list, max_length=500)
    patterns: list[str] = Field(default_factory=list, max_length=100)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)

    _texts = field_validator("utterances", "keywords", "patterns")(_clean_texts)


class DefaultRoute(BaseModel):
    """Where everything else goes: the base model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", pattern=ROUTE_NAME.pattern)
    utterances: list[str] = Field(default_factory=list, max_length=2000)

    _texts = field_validator("utterances")(_clean_texts)


class RouteTable(BaseModel):
    """A whole, validated route table."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.45, ge=-1.0, le=1.0)
    method: Method = "knn"
    k: int = Field(default=3, ge=1, le=50)
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
    names = Counter([table.default.name, *(r.name for r in table.routes)])
    for name, count in names.items():
        if count > 1:
            yield f"route name {name!r} is used {count} times (the default route counts)"
    for route in table.routes:
        for pattern in route.patterns:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                yield f"route {route.name!r}: pattern {pattern!r} is not a valid regex: {exc}"
    owners: dict[str, tuple[str, set[str]]] = {}
    for route_name, texts in [
        (table.default.name, table.default.utterances),
        *((r.name, r.utterances) for r in table.routes),
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


def demo_eval_path() -> Path:
    """The packaged labelled evaluation set of the demo table."""
    return Path(str(resources.files("gateway.routing").joinpath("demo", "eval.jsonl")))


def read_table_source(where: str | Path) -> str:
    """A table's text from a path, or the demo table for `demo`."""
    path = demo_table_path() if str(where) == DEMO_TABLE else Path(where)
    return path.read_text(encoding="utf-8")
