"""Checking a whole document at once: YAML (or JSON) text read into a pydantic model, every
problem listed with where it is (`routes.french.scorers[2].expect: ...`).

Pydantic lists the problems of every field it can reach; a model's own checks, run once its
fields are right, raise `FieldProblems` to report each problem at the field it is about.
What pydantic checks only late (a name written twice in a list, a key written twice) is
read off the raw document, so it shows beside the other problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.routing.table import ROUTE_NAME

M = TypeVar("M", bound=BaseModel)
ROOT: Final = "config"
# Read as a document's source, the packaged demo document.
DEMO: Final = "demo"
_MERGE: Final = "tag:yaml.org,2002:merge"
_NOT_A_MAPPING: Final = ("model_type", "model_attributes_type", "dict_type")


def _route_name(name: str) -> str:
    if not ROUTE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a route name (lower-case letters, digits, '_', '.', '-'; "
            "at most 63 characters)"
        )
    return name


# A route's name as a document's key (the names of adapters and of the route table's routes).
RouteName = Annotated[str, AfterValidator(_route_name)]


class FieldProblems(ValueError):
    """A model's own checks failed: each problem with the field it is about (`margin`,
    `ceiling.value`; empty for the model as a whole)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__(
            "; ".join(f"{field}: {text}" if field else text for field, text in problems)
        )
        self.problems = tuple(problems)


def _at(place: str, text: str) -> str:
    return f"{place}: {text}" if place else text


def check_document(
    source: str,
    model: type[M],
    *,
    error: Callable[[list[str]], Exception],
    fields: str,
    checks: Callable[[dict[str, Any]], Iterable[str]] = lambda data: (),
    kinds: Sequence[str] = (),
) -> M:
    """Parse `source` into `model`, or raise `error(problems)` listing every problem.

    `fields` names the top-level keys (for a document that is not a mapping); `checks` finds
    problems in the raw mapping; `kinds` are the tags of a discriminated union (`kind: ...`).
    An empty document is an empty mapping.
    """
    try:
        tree = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise error([f"{ROOT}: not valid YAML: {exc}".replace("\n", " ")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error([f"{ROOT}: must be a mapping ({fields})"])
    problems = [*repeated_keys(tree), *checks(data)]
    try:
        document = model.model_validate(data)
    except ValidationError as exc:
        described = [line for detail in exc.errors() for line in describe(detail, kinds)]
        raise error([*described, *problems]) from exc
    if problems:
        raise error(problems)
    return document


def repeated_keys(node: Any, where: str = "", seen: set[int] | None = None) -> Iterator[str]:
    """Keys written twice in one mapping, read off the composed nodes: YAML keeps the last of
    them quietly (a route written twice would lose its first entry)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already read
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from repeated_keys(item, f"{where}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        keys: set[tuple[str, str]] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            if (key.tag, key.value) in keys:
                line = key.start_mark.line + 1
                yield f"{where or ROOT}: {key.value!r} is written twice (again on line {line})"
            keys.add((key.tag, key.value))
            yield from repeated_keys(value, f"{where}.{key.value}" if where else key.value, seen)


def route_lists(data: dict[str, Any], key: str) -> Iterator[tuple[str, Any]]:
    """Each route's raw list under `key` (`routes.<route>.<key>`), as written."""
    routes = data.get("routes")
    for route, entry in routes.items() if isinstance(routes, dict) else ():
        yield f"routes.{route}.{key}", entry.get(key) if isinstance(entry, dict) else None


def repeated_names(
    lists: Iterable[tuple[str, Any]],
    name_of: Callable[[Any], str | None],
    *,
    field: str,
    hint: str,
) -> Iterator[str]:
    """Names written twice within one list: `lists` holds each list's place and raw items;
    `name_of` reads an item's name (None: the item has none to compare)."""
    for where, items in lists:
        leaf = where.rsplit(".", 1)[-1]
        first: dict[str, int] = {}
        for index, item in enumerate(items if isinstance(items, list) else ()):
            name = name_of(item)
            if name is None:
                continue
            if name in first:
                again = f"{leaf}[{first[name]}]"
                yield f"{where}[{index}].{field}: {name!r} is {again}'s name too ({hint})"
            else:
                first[name] = index


def where(loc: tuple[int | str, ...], kinds: Sequence[str] = ()) -> str:
    """A pydantic error's place, written as in the document: `routes.r.scorers[2].expect`."""
    place = ""
    for index, part in enumerate(loc):
        key = loc[index + 1 : index + 2] == ("[key]",)
        if isinstance(part, int) and not key:
            place += f"[{part}]"
        # A dict key's own error and the discriminated union's tag add no place.
        elif part == "[key]" or (index and isinstance(loc[index - 1], int) and part in kinds):
            continue
        else:
            place += f".{part}" if place else str(part)
    return place or ROOT


def describe(error: ErrorDetails, kinds: Sequence[str] = ()) -> list[str]:
    """A pydantic error as `place: problem` lines (one per problem a `FieldProblems` holds)."""
    place = where(error["loc"], kinds)
    ctx = error.get("ctx", {})
    cause = ctx.get("error")
    if error["type"] == "value_error" and isinstance(cause, FieldProblems):
        return [_at(f"{place}.{field}" if field else place, text) for field, text in cause.problems]
    known = ", ".join(kinds)
    messages = {
        "value_error": str(cause),
        "union_tag_invalid": f"unknown kind {ctx.get('tag')!r} (kinds: {known})",
        "union_tag_not_found": f"kind is missing (kinds: {known})",
        "extra_forbidden": "unknown field",
        "list_type": "must be a list",
        **dict.fromkeys(_NOT_A_MAPPING, "must be a mapping"),
    }
    return [f"{place}: {messages.get(error['type'], error['msg'])}"]


def read_source(where: str | Path, demo: Path) -> str:
    """A document's text from a path, or the packaged `demo` one for `demo`."""
    path = demo if str(where) == DEMO else Path(where)
    return path.read_text(encoding="utf-8")
