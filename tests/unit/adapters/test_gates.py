from __future__ import annotations

import json
from pathlib import Path

from adapters.evaluate import (
    Gate,
    SetResult,
    check_gates,
    report_json,
    report_markdown,
    write_report,
)
from adapters.spec import LoadedSpec, parse_spec

SPEC = """\
name: pirate
data:
  train: [train.jsonl]
evaluation:
  held_out: {share: 0.2}
"""


def loaded_with(gates: str, tmp_path: Path = Path("/nowhere")) -> LoadedSpec:
    text = SPEC + "gates:\n" + gates
    return LoadedSpec(parse_spec(text), tmp_path / "spec.yaml", text)


def result(name: str, rows: int = 10, **means: dict[str, float]) -> SetResult:
    return SetResult(name, rows, [], means=dict(means))


def by_name(gates: list[Gate]) -> dict[str, Gate]:
    return {g.name: g for g in gates}


def test_min_gate_passes_at_or_above_its_threshold() -> None:
    loaded = loaded_with("  min: {held_out.exact_match: 0.7}\n")

    (gate,) = check_gates(loaded, [result("held_out", candidate={"exact_match": 0.7})])

    assert gate == Gate("min held_out.exact_match", True, 0.7, 0.7, "0.700 ≥ 0.700 (n=10)")


def test_min_gate_fails_below_its_threshold() -> None:
    loaded = loaded_with("  min: {held_out.exact_match: 0.7}\n")

    (gate,) = check_gates(loaded, [result("held_out", candidate={"exact_match": 0.6})])

    assert gate.passed is False
    assert gate.reason == "0.600 < 0.700 (n=10)"


def test_min_gate_with_a_star_applies_to_every_set_but_general() -> None:
    # The spec refuses a `*` key today (see test_spec), so the gates are set past validation.
    loaded = loaded_with("  min: {}\n")
    gates = loaded.spec.gates.model_copy(update={"min": {"*.exact_match": 0.5}})
    loaded.spec = loaded.spec.model_copy(update={"gates": gates})
    results = [
        result("held_out", candidate={"exact_match": 0.9}),
        result("slices.dates", candidate={"exact_match": 0.4}),
        result("general", candidate={"contains": 0.1}),
    ]

    gates = by_name(check_gates(loaded, results))

    assert set(gates) == {"min held_out.exact_match", "min slices.dates.exact_match"}
    assert gates["min held_out.exact_match"].passed is True
    assert gates["min slices.dates.exact_match"].passed is False


def test_min_gate_on_a_set_not_measured_fails_and_says_so() -> None:
    loaded = loaded_with("  min: {golden.exact_match: 0.5}\n")

    (gate,) = check_gates(loaded, [result("held_out", candidate={"exact_match": 1.0})])

    assert gate == Gate(
        "min golden.exact_match", False, None, 0.5, "golden.exact_match was not measured"
    )


def test_min_gate_on_a_set_with_every_row_excluded_fails_as_not_measured() -> None:
    loaded = loaded_with("  min: {golden.exact_match: 0.5}\n")

    (gate,) = check_gates(loaded, [result("golden", rows=0, candidate={"exact_match": 1.0})])

    assert gate.passed is False
    assert gate.reason == "golden.exact_match was not measured"


def test_min_gate_on_a_metric_not_measured_fails() -> None:
    loaded = loaded_with("  min: {held_out.chrf: 0.5}\n")

    (gate,) = check_gates(loaded, [result("held_out", candidate={"exact_match": 1.0})])

    assert gate.passed is False
    assert gate.value is None


def test_max_regression_is_skipped_without_a_stable_version() -> None:
    loaded = loaded_with("  max_regression: {exact_match: 0.05}\n")

    (gate,) = check_gates(loaded, [result("held_out", candidate={"exact_match": 0.1})])

    assert gate == Gate(
        "max regression held_out.exact_match",
        True,
        None,
        0.05,
        "no stable version to compare with",
    )


def test_max_regression_fails_when_the_drop_exceeds_the_allowance() -> None:
    loaded = loaded_with("  max_regression: {exact_match: 0.05}\n")
    results = [result("held_out", candidate={"exact_match": 0.5}, stable={"exact_match": 0.75})]

    (gate,) = check_gates(loaded, results)

    assert gate.passed is False
    assert gate.value == 0.25
    assert gate.reason == "stable 0.750 → new 0.500: lost 0.250 (> 0.050 allowed)"


def test_max_regression_passes_within_the_allowance_and_on_a_gain() -> None:
    loaded = loaded_with("  max_regression: {exact_match: 0.05}\n")
    results = [
        result("held_out", candidate={"exact_match": 0.72}, stable={"exact_match": 0.75}),
        result("golden", candidate={"exact_match": 0.9}, stable={"exact_match": 0.5}),
    ]

    gates = by_name(check_gates(loaded, results))

    assert gates["max regression held_out.exact_match"].passed is True
    assert gates["max regression golden.exact_match"].passed is True
    assert gates["max regression golden.exact_match"].reason == (
        "stable 0.500 → new 0.900: gained 0.400"
    )
    assert gates["max regression held_out.exact_match"].reason == (
        "stable 0.750 → new 0.720: lost 0.030 (≤ 0.050 allowed)"
    )


def test_max_regression_allows_a_drop_of_exactly_the_allowance() -> None:
    # 0.8 - 0.7 is 0.10000000000000009 in floats: without a tolerance, 8/10 on the stable
    # version and 7/10 on the new one would fail a 0.1 allowance ("lost 0.100 (> 0.100").
    loaded = loaded_with("  max_regression: {exact_match: 0.1}\n")
    results = [result("held_out", candidate={"exact_match": 0.7}, stable={"exact_match": 0.8})]

    (gate,) = check_gates(loaded, results)

    assert gate.passed is True


def test_max_regression_ignores_the_general_set() -> None:
    loaded = loaded_with("  max_regression: {contains: 0.0}\n")
    results = [result("general", candidate={"contains": 0.1}, stable={"contains": 0.9})]

    assert check_gates(loaded, results) == []


def test_max_general_loss_fails_when_the_base_loses_more_than_allowed() -> None:
    loaded = loaded_with("  max_general_loss: 0.1\n")
    results = [result("general", candidate={"contains": 0.5}, base={"contains": 0.75})]

    (gate,) = check_gates(loaded, results)

    assert gate == Gate(
        "max general loss",
        False,
        0.25,
        0.1,
        "base 0.750 → new 0.500: lost 0.250 (> 0.100 allowed)",
    )


def test_max_general_loss_passes_within_the_allowance() -> None:
    loaded = loaded_with("  max_general_loss: 0.1\n")
    results = [result("general", candidate={"contains": 0.75}, base={"contains": 0.8})]

    (gate,) = check_gates(loaded, results)

    assert gate.passed is True


def test_max_general_loss_allows_a_loss_of_exactly_the_allowance() -> None:
    # BUG (adapters/evaluate.py:210): as for max_regression, 0.8 - 0.7 > 0.1 in floats.
    loaded = loaded_with("  max_general_loss: 0.1\n")
    results = [result("general", candidate={"contains": 0.7}, base={"contains": 0.8})]

    (gate,) = check_gates(loaded, results)

    assert gate.passed is True


def test_max_general_loss_fails_without_a_general_set() -> None:
    loaded = loaded_with("  max_general_loss: 0.1\n")

    (gate,) = check_gates(loaded, [result("held_out", candidate={"exact_match": 1.0})])

    assert gate == Gate("max general loss", False, None, 0.1, "no general set was measured")


VARIANTS = {"candidate": "pirate@2", "base": "base-model", "stable": "pirate@1"}


def sample_report() -> dict[str, object]:
    held = SetResult(
        "held_out",
        9,
        [{"row": 4, "kind": "exact", "detail": "the prompt is a training prompt"}],
        means={"candidate": {"exact_match": 0.5, "chrf": 0.25}, "base": {"exact_match": 0.125}},
        answers={"candidate": ["{}"], "base": ["hello"]},
    )
    gates = [
        Gate("min held_out.exact_match", True, 0.5, 0.4, "0.500 ≥ 0.400 (n=9)"),
        Gate("max general loss", False, None, 0.1, "no general set was measured"),
    ]
    return report_json("pirate", VARIANTS, [held], gates)


def test_report_json_holds_sets_and_gates_and_fails_when_one_gate_fails() -> None:
    report = sample_report()

    assert report["passed"] is False
    assert report["sets"] == {
        "held_out": {
            "rows": 9,
            "excluded": [{"row": 4, "kind": "exact", "detail": "the prompt is a training prompt"}],
            "means": {
                "candidate": {"exact_match": 0.5, "chrf": 0.25},
                "base": {"exact_match": 0.125},
            },
            "answers": {"candidate": ["{}"], "base": ["hello"]},
        }
    }
    assert report["gates"] == [
        {
            "gate": "min held_out.exact_match",
            "passed": True,
            "value": 0.5,
            "threshold": 0.4,
            "reason": "0.500 ≥ 0.400 (n=9)",
        },
        {
            "gate": "max general loss",
            "passed": False,
            "value": None,
            "threshold": 0.1,
            "reason": "no general set was measured",
        },
    ]


def test_report_json_passes_when_every_gate_passes() -> None:
    gates = [Gate("min held_out.exact_match", True, 0.5, 0.4, "ok")]

    assert report_json("pirate", VARIANTS, [], gates)["passed"] is True


def test_report_markdown_shows_a_table_per_set_excluded_rows_and_gates() -> None:
    text = report_markdown(sample_report())
    lines = text.splitlines()

    assert lines[0] == "# Evaluation of pirate"
    assert "## held_out (9 rows, 1 excluded as contaminated)" in lines
    assert "| metric | candidate | base | stable |" in lines
    assert "| chrf | 0.250 | - | - |" in lines
    assert "| exact_match | 0.500 | 0.125 | - |" in lines
    assert "- excluded row 4 (exact): the prompt is a training prompt" in lines
    assert "- pass min held_out.exact_match: 0.500 ≥ 0.400 (n=9)" in lines
    assert "- **FAIL** max general loss: no general set was measured" in lines
    assert lines[-1] == "Result: FAILED"


def test_write_report_writes_both_files_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    report = sample_report()
    (tmp_path / "evaluation.json").write_text("old", encoding="utf-8")

    json_path, md_path = write_report(tmp_path, report)

    assert json_path == tmp_path / "evaluation.json"
    assert md_path == tmp_path / "evaluation.md"
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    assert md_path.read_text(encoding="utf-8") == report_markdown(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation.json", "evaluation.md"]
