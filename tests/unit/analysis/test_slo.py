"""The per-route SLO file: parsing, resolved directions, scorers and margins, the alpha split,
defaults, every problem at once, the demo file."""

from __future__ import annotations

import json

import pytest

from gateway.analysis.slo import (
    KINDS,
    Margin,
    SignalKind,
    SloFile,
    demo_slos_path,
    parse_slos,
    read_slo_source,
)
from gateway.errors import InvalidRequest, InvalidSloConfig

FULL = """\
# SLOs of the pirate route; the defaults cover the others
defaults:
  analysis: {alpha: 0.05, on_fail: rollback, on_inconclusive: pause, max_step_duration_s: 3600}
  signals:
    - {signal: error_rate, critical: true, margin: 0.01, ceiling: {value: 0.5, min_samples: 10}}
    - {signal: latency_p95, margin: "+25%", max: 5000}
routes:
  pirate:
    analysis: {alpha: 0.1, dry_run: true}
    signals:
      - {signal: error_rate, critical: true, margin: 0.01, ceiling: {value: 0.5, min_samples: 10}}
      - {signal: verifier_pass, scorer: pirate_voice, critical: true, margin: -0.1, min: 0.5}
      - {signal: reward_mean, margin: "-10%", weight: 2}
      - {signal: satisfaction_rate, margin: -0.05, min_samples: 50, dry_run: true}
"""


def problems(source: str) -> list[str]:
    """The problems `parse_slos(source)` reports."""
    with pytest.raises(InvalidSloConfig) as info:
        parse_slos(source)
    return info.value.problems


# -- accepted files ------------------------------------------------------------------------


def test_a_full_file_parses_and_keeps_its_source_verbatim() -> None:
    slos = parse_slos(FULL)
    assert slos.source == FULL
    pirate = slos.routes["pirate"]
    assert [s.name for s in pirate.signals] == [
        "error_rate",
        "verifier_pass:pirate_voice",
        "reward_mean:reward",
        "satisfaction_rate",
    ]
    assert (pirate.analysis.alpha, pirate.analysis.dry_run) == (0.1, True)
    assert (pirate.analysis.on_fail, pirate.analysis.noncritical_failures) == ("rollback", 2)
    assert pirate.signals[3].dry_run and pirate.signals[3].min_samples == 50
    assert pirate.signals[0].min_samples == 30 and pirate.signals[0].ceiling is not None
    assert pirate.signals[0].ceiling.min_samples == 10


def test_directions_and_scorers_resolve_to_the_kinds_own() -> None:
    signals = parse_slos(FULL).routes["pirate"].signals
    assert [s.resolved_direction for s in signals] == ["lower", "higher", "higher", "higher"]
    assert [s.resolved_scorer for s in signals] == [None, "pirate_voice", "reward", None]
    judge = parse_slos("defaults: {signals: [{signal: judge_win_rate, margin: -0.05}]}")
    assert judge.defaults is not None and judge.defaults.signals[0].name == "judge_win_rate:judge"


def test_a_reward_model_of_cost_may_be_lower_is_better() -> None:
    source = "{signal: reward_mean, scorer: cost, direction: lower, margin: '+5%'}"
    defaults = parse_slos(f"defaults: {{signals: [{source}]}}").defaults
    assert defaults is not None
    [signal] = defaults.signals
    assert (signal.resolved_direction, signal.name) == ("lower", "reward_mean:cost")


def test_margins_are_absolute_numbers_or_relative_percentages_written_back_as_given() -> None:
    signals = parse_slos(FULL).routes["pirate"].signals
    assert signals[1].margin == Margin(-0.1, relative=False)
    assert signals[2].margin == Margin(-0.1, relative=True)
    defaults = parse_slos(FULL).defaults
    assert defaults is not None and defaults.signals[1].margin == Margin(0.25, relative=True)
    dumped = parse_slos(FULL).model_dump(mode="json")
    assert dumped["defaults"]["signals"][1]["margin"] == "+25%"
    assert [s["margin"] for s in dumped["routes"]["pirate"]["signals"]] == [
        0.01,
        -0.1,
        "-10%",
        -0.05,
    ]


def test_alpha_is_split_across_a_routes_signals_by_weight() -> None:
    pirate = parse_slos(FULL).routes["pirate"]
    alphas = [pirate.alpha_of(s) for s in pirate.signals]
    assert alphas == pytest.approx([0.02, 0.02, 0.04, 0.02])
    assert sum(alphas) == pytest.approx(pirate.analysis.alpha)


def test_a_route_without_its_own_slos_gets_the_defaults_else_none() -> None:
    slos = parse_slos(FULL)
    assert slos.for_route("pirate") is slos.routes["pirate"]
    assert slos.for_route("cowboy") is slos.defaults
    only_routes = parse_slos("routes: {shout: {signals: [{signal: error_rate, margin: 0}]}}")
    assert only_routes.for_route("cowboy") is None


def test_json_text_is_accepted() -> None:
    source = json.dumps({"routes": {"shout": {"signals": [{"signal": "ttft_p95", "margin": 50}]}}})
    [signal] = parse_slos(source).routes["shout"].signals
    assert signal.signal is SignalKind.TTFT_P95 and signal.margin == Margin(50.0)


def test_every_kind_has_its_reading() -> None:
    assert set(KINDS) == set(SignalKind)
    assert [k for k, i in KINDS.items() if not i.direction_fixed] == [SignalKind.REWARD_MEAN]
    assert {k for k, i in KINDS.items() if i.unit == "ms"} == {"latency_p95", "ttft_p95"}


# -- refused files -------------------------------------------------------------------------

BAD = """
routes:
  pirate:
    signals:
      - {signal: telepathy, margin: 0}
      - {signal: verifier_pass, scorer: pirate_voice, margin: -0.1, min: 0.9, max: 0.2}
      - {signal: verifier_pass, scorer: pirate_voice2, margin: 0.1}
      - {signal: satisfaction_rate, margin: "-10%"}
      - {signal: verifier_pass, margin: -0.1}
      - {signal: error_rate, margin: 0.01, ceiling: {value: 1.5}}
      - {signal: latency_p95, margin: "+10%", colour: red}
      - {signal: ttft_p95, scorer: judge, margin: 0}
"""


def test_a_file_with_many_mistakes_reports_every_one_where_it_is() -> None:
    found = problems(BAD)
    assert [p.split(": ", 1)[0] for p in found] == [
        "routes.pirate.signals[0].signal",
        "routes.pirate.signals[1]",
        "routes.pirate.signals[2].margin",
        "routes.pirate.signals[3].margin",
        "routes.pirate.signals[4].scorer",
        "routes.pirate.signals[5].ceiling.value",
        "routes.pirate.signals[6].colour",
        "routes.pirate.signals[7].scorer",
    ]
    assert found[0].endswith(
        "unknown signal kind 'telepathy' (kinds: error_rate, latency_p95, ttft_p95, "
        "verifier_pass, judge_win_rate, reward_mean, satisfaction_rate)"
    )
    assert "impossible bounds: min 0.9 is above max 0.2" in found[1]
    assert found[2] == (
        "routes.pirate.signals[2].margin: verifier_pass is higher-is-better: its margin must "
        "be ≤ 0 (got 0.1)"
    )
    assert "takes an absolute margin" in found[3]
    assert "needs `scorer`" in found[4]
    assert "must be in [0, 1] (got 1.5)" in found[5]
    assert found[6].endswith("unknown field")
    assert found[7].endswith("ttft_p95 takes no scorer")


def test_the_error_is_an_invalid_request_listing_every_problem() -> None:
    with pytest.raises(InvalidSloConfig) as info:
        parse_slos(BAD)
    error = info.value
    assert isinstance(error, InvalidRequest)
    assert (error.status_code, error.code, error.param) == (400, "invalid_slos", "slos")
    assert error.message.startswith("invalid SLO file: routes.pirate.signals[0].signal: ")
    assert all(problem in error.message for problem in error.problems)


def test_one_signal_reports_all_of_its_own_problems() -> None:
    source = """
defaults:
  signals:
    - signal: error_rate
      margin: -2
      min: -0.5
      max: 1.5
      ceiling: {value: 0.1}
"""
    assert problems(source) == [
        "defaults.signals[0].margin: error_rate is lower-is-better: its margin must be ≥ 0 "
        "(got -2)",
        "defaults.signals[0].margin: error_rate is a rate in [0, 1]: its margin must be "
        "within ±1 (got -2)",
        "defaults.signals[0].min: error_rate is a rate: it must be in [0, 1] (got -0.5)",
        "defaults.signals[0].max: error_rate is a rate: it must be in [0, 1] (got 1.5)",
        "defaults.signals[0].ceiling.value: a ceiling below max (1.5) trips what the bound "
        "accepts (got 0.1)",
    ]


@pytest.mark.parametrize(
    ("signal", "problem"),
    [
        (
            "{signal: latency_p95, margin: 100, min: -1}",
            "min: latency_p95 is in milliseconds: it must be ≥ 0 (got -1)",
        ),
        (
            "{signal: latency_p95, margin: 100, direction: higher}",
            "direction: latency_p95 is lower-is-better: its direction is fixed",
        ),
        (
            "{signal: verifier_pass, scorer: v, margin: -0.1, min: 0.6, ceiling: {value: 0.8}}",
            "ceiling.value: a ceiling above min (0.6) trips what the bound accepts (got 0.8)",
        ),
        (
            "{signal: reward_mean, margin: 'ten%'}",
            "margin: 'ten%' is not a percentage such as '-10%'",
        ),
        (
            "{signal: reward_mean, margin: [1]}",
            "margin: must be a number (absolute) or a percentage such as '-10%' (got [1])",
        ),
        ("{signal: reward_mean}", "margin: Field required"),
        ("{signal: reward_mean, margin: 0, weight: 0}", "weight: Input should be greater than 0"),
        ("{signal: reward_mean, margin: 0, min: .nan}", "min: Input should be a finite number"),
    ],
)
def test_each_problem_of_a_signal_is_named_at_its_field(signal: str, problem: str) -> None:
    assert problems(f"defaults: {{signals: [{signal}]}}") == [f"defaults.signals[0].{problem}"]


def test_a_ceiling_at_a_bound_is_accepted() -> None:
    parse_slos(
        "defaults: {signals: [{signal: error_rate, margin: 0, max: 0.2, ceiling: {value: 0.2}}]}"
    )


def test_signal_names_are_unique_within_a_route() -> None:
    source = """
defaults:
  signals: [{signal: reward_mean, margin: 0}, {signal: reward_mean, scorer: reward, margin: 0}]
routes:
  a:
    signals:
      - {signal: verifier_pass, scorer: one, margin: 0}
      - {signal: verifier_pass, scorer: two, margin: 0}
      - {signal: verifier_pass, scorer: one, margin: 0}
"""
    assert problems(source) == [
        "defaults.signals[1].signal: 'reward_mean:reward' is signals[0]'s name too (names are "
        "unique within a route: `scorer` tells signals of one kind apart)",
        "routes.a.signals[2].signal: 'verifier_pass:one' is signals[0]'s name too (names are "
        "unique within a route: `scorer` tells signals of one kind apart)",
    ]


def test_analysis_settings_are_bounded() -> None:
    source = """
routes:
  a:
    analysis: {alpha: 0.5, on_fail: shrug, max_step_duration_s: 0, noncritical_failures: 0}
    signals: [{signal: error_rate, margin: 0}]
"""
    assert [p.split(": ", 1)[0] for p in problems(source)] == [
        "routes.a.analysis.alpha",
        "routes.a.analysis.on_fail",
        "routes.a.analysis.max_step_duration_s",
        "routes.a.analysis.noncritical_failures",
    ]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("", "config: an SLO file needs `defaults`, `routes` or both"),
        ("# nothing yet\n", "config: an SLO file needs `defaults`, `routes` or both"),
        ("routes: {}", "config: an SLO file needs `defaults`, `routes` or both"),
        ("- signal: error_rate\n", "config: must be a mapping (defaults, routes)"),
        ("routes: {a: {signals: []}}", "routes.a.signals: List should have at least 1 item"),
        ("routes: {a: {}}", "routes.a.signals: Field required"),
        ("routes: {Bad Route: {signals: [{signal: error_rate, margin: 0}]}}", "routes.Bad Route:"),
        ("colour: red\ndefaults: {signals: [{signal: error_rate, margin: 0}]}", "colour: unknown"),
    ],
)
def test_shape_problems_read_plainly(source: str, problem: str) -> None:
    [found] = problems(source)
    assert found.startswith(problem), found


def test_yaml_that_does_not_parse_names_the_line() -> None:
    [problem] = problems("routes:\n  a:\n    signals: [\n")
    assert problem.startswith("config: not valid YAML:") and "line 4" in problem


def test_a_route_written_twice_is_refused() -> None:
    one = "{signals: [{signal: error_rate, margin: 0}]}"
    assert problems(f"routes:\n  a: {one}\n  a: {one}\n") == [
        "routes: 'a' is written twice (again on line 3)"
    ]


def test_more_than_32_signals_are_refused() -> None:
    signals = [{"signal": "verifier_pass", "scorer": f"v{i}", "margin": 0} for i in range(33)]
    [problem] = problems(json.dumps({"routes": {"a": {"signals": signals}}}))
    assert problem.startswith("routes.a.signals: List should have at most 32 items")


# -- the demo file -------------------------------------------------------------------------

DEMO_VERIFIERS = {
    "pirate": "pirate_voice",
    "french": "answer_is_french",
    "shout": "shouted",
    "cowboy": "cowboy_voice",
}


def demo() -> SloFile:
    return parse_slos(read_slo_source("demo"))


def test_the_demo_file_is_packaged_and_parses() -> None:
    assert read_slo_source("demo") == demo_slos_path().read_text(encoding="utf-8")
    slos = demo()
    assert list(slos.routes) == list(DEMO_VERIFIERS) and slos.defaults is None


@pytest.mark.parametrize(("route", "verifier"), list(DEMO_VERIFIERS.items()))
def test_each_demo_route_holds_its_style_verifier_errors_and_latency(
    route: str, verifier: str
) -> None:
    slo = demo().routes[route]
    assert [(s.name, s.critical) for s in slo.signals] == [
        ("error_rate", True),
        ("latency_p95", False),
        (f"verifier_pass:{verifier}", True),
        ("reward_mean:reward", False),
        ("satisfaction_rate", False),
    ]
    errors, latency, _, reward, satisfaction = slo.signals
    assert errors.ceiling is not None and (errors.ceiling.value, errors.ceiling.min_samples) == (
        0.5,
        10,
    )
    assert (latency.margin, reward.margin) == (Margin(0.5, True), Margin(-0.1, True))
    assert (satisfaction.margin, satisfaction.min_samples) == (Margin(-0.1), 50)


def test_the_demo_verifiers_are_the_demo_scorer_configurations() -> None:
    from gateway.quality.config import parse_scorer_config, read_scorer_source

    scorers = parse_scorer_config(read_scorer_source("demo"))
    for route, slo in demo().routes.items():
        names = {s.name for s in scorers.for_route(route)}
        assert {s.resolved_scorer for s in slo.signals if s.resolved_scorer} <= names
