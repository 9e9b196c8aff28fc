"""The route table: parsing, every refusal (all problems at once) and the adapter check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.catalog import AdapterVersion, ModelCatalog
from gateway.errors import InvalidRequest, InvalidRouteTable
from gateway.routing.table import (
    RouteTable,
    check_adapters,
    parse_table,
    read_table_source,
)

MINIMAL = """
routes:
  - name: pirate
    adapter: pirate
    utterances: ["tell me about the sea"]
"""


def refusal(source: str) -> InvalidRouteTable:
    """The error `parse_table(source)` raises."""
    with pytest.raises(InvalidRouteTable) as info:
        parse_table(source)
    return info.value


def catalog() -> ModelCatalog:
    return ModelCatalog(
        "base",
        [
            AdapterVersion("pirate", 1, Path("/x")),
            AdapterVersion("pirate", 2, Path("/y")),
            AdapterVersion("french", 1, Path("/z")),
        ],
    )


def table_with_adapters(*adapters: str) -> RouteTable:
    routes = [
        {"name": f"r{i}", "adapter": adapter, "utterances": [f"example number {i}"]}
        for i, adapter in enumerate(adapters)
    ]
    return parse_table(json.dumps({"routes": routes}))


# -- accepted tables ---------------------------------------------------------------------


def test_minimal_table_parses_with_defaults() -> None:
    table = parse_table(MINIMAL)
    assert table.threshold == pytest.approx(0.45)
    assert table.method == "knn"
    assert table.k == 3
    assert table.default.name == "default"
    assert table.default.utterances == []
    [route] = table.routes
    assert (route.name, route.adapter, route.utterances) == (
        "pirate",
        "pirate",
        ["tell me about the sea"],
    )
    assert route.keywords == [] and route.patterns == [] and route.threshold is None
    assert table.threshold_of(route) == pytest.approx(0.45)
    assert table.route("pirate") is route
    with pytest.raises(KeyError):
        table.route("french")


def test_json_text_is_accepted() -> None:
    source = json.dumps(
        {
            "threshold": 0.6,
            "method": "centroid",
            "k": 5,
            "default": {"name": "base-route", "utterances": ["what is 2 + 2"]},
            "routes": [
                {
                    "name": "french",
                    "adapter": "french@1",
                    "keywords": ["bonjour"],
                    "patterns": [r"\bin french\b"],
                    "utterances": ["say it in french"],
                    "threshold": 0.2,
                }
            ],
        }
    )
    table = parse_table(source)
    assert table.threshold == pytest.approx(0.6)
    assert table.method == "centroid"
    assert table.k == 5
    assert table.default.name == "base-route"
    assert table.default.utterances == ["what is 2 + 2"]
    route = table.route("french")
    assert route.adapter == "french@1"
    assert route.keywords == ["bonjour"]
    assert table.threshold_of(route) == pytest.approx(0.2)


def test_texts_are_stripped() -> None:
    table = parse_table(
        """
routes:
  - name: pirate
    adapter: pirate
    keywords: ["  ahoy "]
    utterances: ["  sail away  "]
"""
    )
    assert table.routes[0].utterances == ["sail away"]
    assert table.routes[0].keywords == ["ahoy"]


def test_packaged_demo_table_parses() -> None:
    table = parse_table(read_table_source("demo"))
    assert len(table.routes) >= 4
    names = [route.name for route in table.routes]
    assert len(set(names)) == len(names)
    assert table.default.name not in names
    assert all(route.utterances for route in table.routes)


def test_read_table_source_reads_a_path(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert read_table_source(path) == MINIMAL
    assert read_table_source(str(path)) == MINIMAL


# -- refusals ----------------------------------------------------------------------------


def test_refusal_is_an_invalid_request_with_its_own_code() -> None:
    error = refusal("routes: []")
    assert isinstance(error, InvalidRequest)
    assert error.status_code == 400
    assert error.code == "invalid_route_table"
    assert error.param == "routes"
    assert error.message.startswith("invalid route table: ")
    assert error.body()["error"]["code"] == "invalid_route_table"
    assert len(error.problems) == 1


def route_yaml(name: str, adapter: str, *utterances: str, extra: str = "") -> str:
    quoted = ", ".join(json.dumps(u) for u in utterances)
    return f"  - name: {name}\n    adapter: {adapter}\n    utterances: [{quoted}]\n{extra}"


REFUSALS: dict[str, tuple[str, str]] = {
    "invalid yaml": ("routes: [\n  - name: a\n", "not valid YAML"),
    "tab indentation": ("routes:\n\t- name: a\n", "not valid YAML"),
    "a list at top level": ("- name: a\n", "must be a mapping"),
    "a string at top level": ("just words", "must be a mapping"),
    "an empty document": ("", "must be a mapping"),
    "no routes": ("threshold: 0.5\n", "routes: Field required"),
    "empty routes": ("routes: []\n", "routes: List should have at least 1 item"),
    "routes not a list": ("routes: pirate\n", "routes: Input should be a valid list"),
    "a route without utterances": (
        "routes:\n  - name: pirate\n    adapter: pirate\n",
        "routes.0.utterances: Field required",
    ),
    "a route with an empty utterance list": (
        "routes:\n" + route_yaml("pirate", "pirate"),
        "routes.0.utterances: List should have at least 1 item",
    ),
    "an empty utterance": (
        "routes:\n" + route_yaml("pirate", "pirate", "ahoy there", ""),
        "routes.0.utterances: Value error, must not contain empty strings",
    ),
    "a blank utterance": (
        "routes:\n" + route_yaml("pirate", "pirate", "   "),
        "routes.0.utterances: Value error, must not contain empty strings",
    ),
    "an empty keyword": (
        "routes:\n" + route_yaml("pirate", "pirate", "ahoy", extra='    keywords: [""]\n'),
        "routes.0.keywords: Value error, must not contain empty strings",
    ),
    "an empty default utterance": (
        'default:\n  utterances: [""]\nroutes:\n' + route_yaml("pirate", "pirate", "ahoy"),
        "default.utterances: Value error, must not contain empty strings",
    ),
    "duplicate route names": (
        "routes:\n" + route_yaml("pirate", "pirate", "ahoy") + route_yaml("pirate", "p2", "arr"),
        "route name 'pirate' is used 2 times",
    ),
    "a route named like the default route": (
        "routes:\n" + route_yaml("default", "pirate", "ahoy"),
        "route name 'default' is used 2 times (the default route counts)",
    ),
    "a route named like a renamed default route": (
        "default:\n  name: base\nroutes:\n" + route_yaml("base", "pirate", "ahoy"),
        "route name 'base' is used 2 times",
    ),
    "an invalid regex": (
        "routes:\n" + route_yaml("pirate", "pirate", "ahoy", extra="    patterns: ['(unclosed']\n"),
        "route 'pirate': pattern '(unclosed' is not a valid regex",
    ),
    "one utterance in two routes": (
        "routes:\n"
        + route_yaml("pirate", "pirate", "Sail Away")
        + route_yaml("french", "french", "sail away"),
        "utterance 'Sail Away' is an example of several routes: french, pirate",
    ),
    "one utterance in a route and the default": (
        "default:\n  utterances: ['What is 2+2?']\nroutes:\n"
        + route_yaml("pirate", "pirate", "WHAT IS 2+2?"),
        "is an example of several routes: default, pirate",
    ),
    "an unknown top-level field": (
        "colour: blue\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "colour: Extra inputs are not permitted",
    ),
    "an unknown route field": (
        "routes:\n" + route_yaml("pirate", "pirate", "ahoy", extra="    colour: blue\n"),
        "routes.0.colour: Extra inputs are not permitted",
    ),
    "an unknown default field": (
        "default:\n  adapter: x\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "default.adapter: Extra inputs are not permitted",
    ),
    "threshold above 1": (
        "threshold: 1.5\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "threshold: Input should be less than or equal to 1",
    ),
    "threshold below -1": (
        "threshold: -1.01\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "threshold: Input should be greater than or equal to -1",
    ),
    "a route threshold above 1": (
        "routes:\n" + route_yaml("pirate", "pirate", "ahoy", extra="    threshold: 2\n"),
        "routes.0.threshold: Input should be less than or equal to 1",
    ),
    "k of 0": (
        "k: 0\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "k: Input should be greater than or equal to 1",
    ),
    "k of 51": (
        "k: 51\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "k: Input should be less than or equal to 50",
    ),
    "an unknown method": (
        "method: svm\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "method: Input should be 'head', 'knn' or 'centroid'",
    ),
    "an upper-case route name": (
        "routes:\n" + route_yaml("Pirate", "pirate", "ahoy"),
        "routes.0.name: String should match pattern",
    ),
    "a route name with a space": (
        "routes:\n" + route_yaml("'pi rate'", "pirate", "ahoy"),
        "routes.0.name: String should match pattern",
    ),
    "a route name starting with a dash": (
        "routes:\n" + route_yaml("-pirate", "pirate", "ahoy"),
        "routes.0.name: String should match pattern",
    ),
    "a route name of 64 characters": (
        "routes:\n" + route_yaml("a" * 64, "pirate", "ahoy"),
        "routes.0.name: String should match pattern",
    ),
    "a bad default name": (
        "default:\n  name: Base Model\nroutes:\n" + route_yaml("pirate", "pirate", "ahoy"),
        "default.name: String should match pattern",
    ),
    "an empty adapter": (
        "routes:\n" + route_yaml("pirate", "''", "ahoy"),
        "routes.0.adapter: String should have at least 1 character",
    ),
}


@pytest.mark.parametrize(("source", "says"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals(source: str, says: str) -> None:
    error = refusal(source)
    assert any(says in problem for problem in error.problems), error.problems
    assert says in error.message
    assert error.status_code == 400 and error.code == "invalid_route_table"


def test_a_route_name_of_63_characters_is_accepted() -> None:
    table = parse_table("routes:\n" + route_yaml("a" * 63, "pirate", "ahoy"))
    assert table.routes[0].name == "a" * 63


@pytest.mark.parametrize("threshold", [-1, 1, 0])
def test_threshold_bounds_are_inclusive(threshold: int) -> None:
    table = parse_table(f"threshold: {threshold}\nroutes:\n" + route_yaml("a", "pirate", "x"))
    assert table.threshold == threshold


@pytest.mark.parametrize("k", [1, 50])
def test_k_bounds_are_inclusive(k: int) -> None:
    assert parse_table(f"k: {k}\nroutes:\n" + route_yaml("a", "pirate", "x")).k == k


def test_the_same_utterance_twice_in_one_route_is_not_a_conflict() -> None:
    table = parse_table("routes:\n" + route_yaml("pirate", "pirate", "ahoy", "AHOY"))
    assert table.routes[0].utterances == ["ahoy", "AHOY"]


def test_every_shape_problem_is_listed_at_once() -> None:
    source = (
        "k: 0\nthreshold: 3\ncolour: red\nroutes:\n"
        + route_yaml("Bad Name", "pirate", "ahoy")
        + route_yaml("french", "french")
    )
    error = refusal(source)
    assert len(error.problems) == 5, error.problems
    expected = [
        "k: Input should be greater than or equal to 1",
        "threshold: Input should be less than or equal to 1",
        "colour: Extra inputs are not permitted",
        "routes.0.name: String should match pattern",
        "routes.1.utterances: List should have at least 1 item",
    ]
    for says in expected:
        assert any(says in problem for problem in error.problems), (says, error.problems)
        assert says in error.message
    assert error.message.count("; ") == len(error.problems) - 1


def test_every_consistency_problem_is_listed_at_once() -> None:
    source = (
        "method: head\nhead: {words: 1.0}\ncontext: {breaks: ['(unclosed']}\nroutes:\n"
        + route_yaml("pirate", "pirate", "ahoy", extra="    patterns: ['[a-', '(x']\n")
        + route_yaml("pirate", "french", "arr")
        + route_yaml("french", "french", "AHOY")
        + route_yaml("default", "french", "bonjour")
    )
    problems = refusal(source).problems
    assert len(problems) == 7, problems
    assert any("context: break '(unclosed' is not a valid regex" in p for p in problems)
    assert any("head: words weighs the word n-grams relative to lexical" in p for p in problems)
    assert any("route name 'pirate' is used 2 times" in p for p in problems)
    assert any("route name 'default' is used 2 times" in p for p in problems)
    assert any("pattern '[a-' is not a valid regex" in p for p in problems)
    assert any("pattern '(x' is not a valid regex" in p for p in problems)
    assert any(
        "utterance 'ahoy' is an example of several routes: french, pirate" in p for p in problems
    )


# -- adapters against the catalogue ------------------------------------------------------


def test_check_adapters_accepts_names_and_pinned_versions() -> None:
    table = table_with_adapters("pirate", "pirate@1", "pirate@2", "french")
    check_adapters(table, catalog())  # no error


def test_check_adapters_accepts_the_demo_table_with_its_adapters() -> None:
    table = parse_table(read_table_source("demo"))
    adapters = [AdapterVersion(route.adapter, 1, Path("/x")) for route in table.routes]
    check_adapters(table, ModelCatalog("base", adapters))


def test_check_adapters_refuses_unknown_adapters_and_lists_servable_ones() -> None:
    table = table_with_adapters("pirate", "cowboy", "pirate@3")
    with pytest.raises(InvalidRouteTable) as info:
        check_adapters(table, catalog())
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("route 'r1': adapter 'cowboy' is not registered")
    assert problems[1].startswith("route 'r2': adapter 'pirate@3' is not registered")
    assert all("(servable adapters: french, pirate)" in p for p in problems)
    assert info.value.status_code == 400 and info.value.code == "invalid_route_table"


def test_check_adapters_with_an_empty_catalogue_says_none() -> None:
    with pytest.raises(InvalidRouteTable) as info:
        check_adapters(table_with_adapters("pirate"), ModelCatalog("base"))
    assert "(servable adapters: none)" in info.value.message


@pytest.mark.parametrize("adapter", ["base", "auto"])
def test_check_adapters_refuses_the_base_model_and_auto(adapter: str) -> None:
    with pytest.raises(InvalidRouteTable) as info:
        check_adapters(table_with_adapters("pirate", adapter), catalog())
    [problem] = info.value.problems
    assert problem == (
        f"route 'r1': adapter {adapter!r} is not an adapter "
        "(the default route serves the base model)"
    )
