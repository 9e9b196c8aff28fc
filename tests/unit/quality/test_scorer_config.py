"""The per-route scorer configuration: parsing, sample rates, every problem at once, the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import InvalidRequest, InvalidScorerConfig
from gateway.quality.config import (
    DEFAULT_SAMPLE_RATE,
    JudgeSpec,
    RewardSpec,
    ScorerConfig,
    demo_scorers_path,
    parse_scorer_config,
    read_scorer_source,
)
from gateway.quality.verifiers import LanguageSpec

DEMO_DATA = Path(__file__).resolve().parents[3] / "adapters" / "demo"

FULL = """\
# scorers for the french route
sample_rate: 0.1
routes:
  french:
    sample_rate: 1.0      # every answer
    scorers:
      - kind: language
        name: answer_is_french
        expect: fr
      - kind: length
        max_chars: 2000
      - kind: judge
        rubric: helpfulness
        sample_rate: 0.05
      - kind: reward
        model: http
        url: http://127.0.0.1:9000/score
  pirate:
    scorers:
      - kind: refusal
"""


def problems(source: str) -> list[str]:
    """The problems `parse_scorer_config(source)` reports."""
    with pytest.raises(InvalidScorerConfig) as info:
        parse_scorer_config(source)
    return info.value.problems


# -- accepted configurations -------------------------------------------------------------


def test_a_full_config_parses_and_keeps_its_source_verbatim() -> None:
    config = parse_scorer_config(FULL)
    assert config.source == FULL
    assert config.route_names() == ["french", "pirate"]
    assert [s.name for s in config.for_route("french")] == [
        "answer_is_french",
        "length",
        "judge",
        "reward",
    ]


def test_sample_rate_is_the_scorers_else_the_routes_else_the_configs() -> None:
    config = parse_scorer_config(FULL)
    assert [s.sample_rate for s in config.for_route("french")] == [1.0, 1.0, 0.05, 1.0]
    assert [s.sample_rate for s in config.for_route("pirate")] == [0.1]


def test_verifiers_are_built_and_judges_and_reward_models_are_left_to_their_workers() -> None:
    language, length, judge, reward = parse_scorer_config(FULL).for_route("french")
    assert language.verifier is not None and language.verifier("Bonjour, je suis ici.").passed
    assert length.verifier is not None
    assert (judge.verifier, reward.verifier) == (None, None)
    assert isinstance(language.spec, LanguageSpec) and language.kind == "language"


def test_judge_and_reward_defaults() -> None:
    config = parse_scorer_config(FULL)
    judge = config.for_route("french")[2].spec
    assert isinstance(judge, JudgeSpec)
    assert (judge.rubric, judge.rubric_version, judge.mode, judge.endpoint, judge.model) == (
        "helpfulness",
        1,
        "pointwise",
        None,
        None,
    )
    source = "routes: {r: {scorers: [{kind: reward, head: pirate}]}}"
    reward = parse_scorer_config(source).for_route("r")[0].spec
    assert isinstance(reward, RewardSpec) and (reward.model, reward.url) == ("builtin", None)
    assert (reward.head, reward.timeout_s) == ("pirate", 10.0)
    with pytest.raises(InvalidScorerConfig, match="head is required"):
        parse_scorer_config("routes: {r: {scorers: [{kind: reward}]}}")


def test_a_route_not_configured_has_no_scorers() -> None:
    assert parse_scorer_config(FULL).for_route("cowboy") == []


def test_sampled_keeps_the_scorers_whose_rate_is_above_the_draw() -> None:
    config = parse_scorer_config(FULL)
    assert [s.name for s in config.sampled("french", 0.5)] == [
        "answer_is_french",
        "length",
        "reward",
    ]
    assert [s.name for s in config.sampled("french", 0.01)] == [
        "answer_is_french",
        "length",
        "judge",
        "reward",
    ]
    assert config.sampled("pirate", 0.1) == []


@pytest.mark.parametrize("source", ["", "# nothing configured yet\n", "{}"])
def test_an_empty_document_is_an_empty_config(source: str) -> None:
    config = parse_scorer_config(source)
    assert config.route_names() == []
    assert config.spec.sample_rate == DEFAULT_SAMPLE_RATE


def test_json_text_is_accepted() -> None:
    source = json.dumps({"routes": {"shout": {"scorers": [{"kind": "caps_share", "min": 0.6}]}}})
    [scorer] = parse_scorer_config(source).for_route("shout")
    assert scorer.verifier is not None and scorer.verifier("HELLO THERE").passed


# -- refused configurations --------------------------------------------------------------


def test_a_config_with_five_mistakes_reports_all_five() -> None:
    source = """
sample_rate: 1.5
routes:
  french:
    scorers:
      - kind: language
        expect: xx
      - kind: regex
        must: ['(unclosed']
      - kind: length
        min_chars: 100
        max_chars: 10
      - kind: length
        max_chars: 10
"""
    found = problems(source)
    assert len(found) == 5, found
    assert [p.split(": ", 1)[0] for p in found] == [
        "sample_rate",
        "routes.french.scorers[0].expect",
        "routes.french.scorers[1].must[0]",
        "routes.french.scorers[2]",
        "routes.french.scorers[3].name",
    ]
    assert "'length' is scorers[2]'s name too" in found[4]


def test_every_kind_of_mistake_is_described_where_it_is() -> None:
    source = """
routes:
  Bad Route: {}
  r:
    colour: red
    scorers:
      - kind: nope
      - {expect: fr}
      - kind: json_schema
        schema: {type: strng}
      - kind: reward
        model: http
      - kind: reward
        name: reward2
        url: http://127.0.0.1/score
      - kind: judge
        rubric: helpfulness
        rubric_version: 0
        endpoint: ftp://example.com
      - kind: caps_share
"""
    found = problems(source)
    assert found == [
        "routes.Bad Route: 'Bad Route' is not a route name (lower-case letters, digits, '_', "
        "'.', '-'; at most 63 characters)",
        "routes.r.scorers[0]: unknown kind 'nope' (kinds: json, json_schema, regex, length, "
        "refusal, language, caps_share, sql, judge, reward)",
        "routes.r.scorers[1]: kind is missing (kinds: json, json_schema, regex, length, "
        "refusal, language, caps_share, sql, judge, reward)",
        "routes.r.scorers[2].schema: not a valid Draft 2020-12 schema: $.type: 'strng' is not "
        "valid under any of the given schemas",
        "routes.r.scorers[3]: url is required when model is http",
        "routes.r.scorers[4]: url and served_model are only for model http",
        "routes.r.scorers[5].rubric_version: Input should be greater than or equal to 1",
        "routes.r.scorers[5].endpoint: 'ftp://example.com' is not an http(s) URL",
        "routes.r.scorers[6]: give min, max or both",
        "routes.r.colour: unknown field",
    ]


def test_the_error_is_an_invalid_request_listing_every_problem() -> None:
    with pytest.raises(InvalidScorerConfig) as info:
        parse_scorer_config("sample_rate: -1\nroutes: {r: {sample_rate: 2}}")
    error = info.value
    assert isinstance(error, InvalidRequest)
    assert (error.status_code, error.code) == (400, "invalid_scorer_config")
    assert error.message == (
        "invalid scorer config: sample_rate: Input should be greater than or equal to 0; "
        "routes.r.sample_rate: Input should be less than or equal to 1"
    )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("routes:\n  french:\n", "routes.french: must be a mapping"),
        ("routes: {french: {scorers: null}}", "routes.french.scorers: must be a list"),
        ("routes: {french: {scorers: [json]}}", "routes.french.scorers[0]: must be a mapping"),
        ("routes: {123: {}}", "routes.123: Input should be a valid string"),
        ("routes: [french]", "routes: must be a mapping"),
    ],
)
def test_shape_problems_read_plainly(source: str, problem: str) -> None:
    assert problems(source) == [problem]


def test_scorer_names_are_unique_within_a_route_only() -> None:
    source = """
routes:
  a:
    scorers: [{kind: refusal}, {kind: refusal, expect: true}]
  b:
    scorers: [{kind: refusal}]
"""
    assert problems(source) == [
        "routes.a.scorers[1].name: 'refusal' is scorers[0]'s name too (names are unique "
        "within a route: set `name`)"
    ]
    parse_scorer_config(source.replace("expect: true", "expect: true, name: must_refuse"))


def test_a_route_written_twice_is_refused() -> None:
    source = "routes:\n  a: {scorers: [{kind: json}]}\n  a: {scorers: [{kind: refusal}]}\n"
    assert problems(source) == ["routes: 'a' is written twice (again on line 3)"]


def test_a_top_level_that_is_not_a_mapping_is_refused() -> None:
    assert problems("- kind: json\n") == ["config: must be a mapping (sample_rate, routes)"]
    assert problems("just words") == ["config: must be a mapping (sample_rate, routes)"]


def test_text_that_is_not_yaml_is_refused() -> None:
    [problem] = problems("routes: {a: [}")
    assert problem.startswith("config: not valid YAML:")


def test_more_than_32_scorers_in_a_route_are_refused() -> None:
    scorers = [{"kind": "refusal", "name": f"r{i}"} for i in range(33)]
    [problem] = problems(json.dumps({"routes": {"a": {"scorers": scorers}}}))
    assert problem.startswith("routes.a.scorers: List should have at most 32 items")


def test_more_than_1000_routes_are_refused() -> None:
    routes = {f"r{i}": {} for i in range(1001)}
    [problem] = problems(json.dumps({"routes": routes}))
    assert problem.startswith("routes: Dictionary should have at most 1000 items")


# -- the demo configuration --------------------------------------------------------------

TYPICAL = {
    "pirate": "Ahoy, matey! A rainbow be sunlight bent through drops o' rain. Savvy?",
    "french": "Un arc-en-ciel apparaît quand la lumière du soleil traverse les gouttes de pluie.",
    "shout": "WOW! A RAINBOW IS SUNLIGHT BENT THROUGH DROPS OF RAIN!!! SO PRETTY!!!",
    "cowboy": "Howdy, partner! I reckon a rainbow is sunlight bent through the rain out yonder.",
}
PLAIN = "A rainbow appears when sunlight is bent and reflected by drops of rain in the air."
STYLE_SCORERS = {
    "pirate": "pirate_voice",
    "french": "answer_is_french",
    "shout": "shouted",
    "cowboy": "cowboy_voice",
}


def demo() -> ScorerConfig:
    return parse_scorer_config(read_scorer_source("demo"))


def test_the_demo_config_is_packaged_and_parses() -> None:
    assert read_scorer_source("demo") == demo_scorers_path().read_text(encoding="utf-8")
    config = demo()
    assert config.route_names() == ["pirate", "french", "shout", "cowboy"]
    for route in config.route_names():
        scorers = config.for_route(route)
        assert {s.kind for s in scorers} >= {"length", "refusal"}
        assert all(s.sample_rate == 1.0 for s in scorers)
        assert [s.kind for s in scorers if s.verifier is None] == ["reward"]


@pytest.mark.parametrize("route", list(TYPICAL))
def test_the_demo_verifiers_pass_a_typical_answer_in_the_routes_style(route: str) -> None:
    verdicts = {s.name: s.verifier(TYPICAL[route]) for s in demo().for_route(route) if s.verifier}
    assert all(v.passed for v in verdicts.values()), verdicts


@pytest.mark.parametrize("route", list(TYPICAL))
def test_the_demo_style_verifier_fails_a_plain_english_answer(route: str) -> None:
    verdicts = {s.name: s.verifier(PLAIN) for s in demo().for_route(route) if s.verifier}
    assert not verdicts.pop(STYLE_SCORERS[route]).passed
    assert all(v.passed for v in verdicts.values()), verdicts


@pytest.mark.parametrize("route", list(TYPICAL))
def test_the_demo_verifiers_pass_every_answer_the_demo_adapter_was_trained_on(route: str) -> None:
    config = demo()
    lines = (DEMO_DATA / f"{route}.jsonl").read_text(encoding="utf-8").splitlines()
    failed = [
        (answer, s.name)
        for answer in (json.loads(line)["response"] for line in lines if line.strip())
        for s in config.for_route(route)
        if s.verifier and not s.verifier(answer).passed
    ]
    assert failed == []


def test_the_demo_refusal_check_fails_a_refusal() -> None:
    [refusal] = [s for s in demo().for_route("pirate") if s.kind == "refusal"]
    assert refusal.verifier is not None
    assert not refusal.verifier("Arr, I'm sorry, but I cannot help with that, matey.").passed
