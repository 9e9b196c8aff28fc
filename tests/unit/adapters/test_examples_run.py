"""The examples run fails a task whose adapter does not clearly beat the base model on its
held-out set's main metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from adapters.examples_run import CLEAR_MARGIN, MAIN_METRIC, TASKS, _shortfall, app


def report(metric: str, base: float, new: float) -> dict[str, Any]:
    means = {"base": {metric: base}, "candidate": {metric: new}}
    return {"sets": {"held_out": {"means": means}}}


def test_every_task_names_its_main_metric() -> None:
    assert set(MAIN_METRIC) == set(TASKS)


def test_a_clear_gain_passes_and_a_small_one_is_named() -> None:
    assert _shortfall("sql", report("sql_execution", 0.0, 0.95)) is None
    assert _shortfall("french", report("chrf", 0.148, 0.148 + CLEAR_MARGIN + 0.01)) is None

    why = _shortfall("json_extract", report("exact_match", 0.40, 0.55))

    assert why == "json_extract: held-out exact_match 0.400 → 0.550, less than 0.2 above base"


def test_an_unknown_task_is_refused_before_anything_starts(tmp_path: Path) -> None:
    workdir = tmp_path / "work"

    result = CliRunner().invoke(app, ["--workdir", str(workdir), "--task", "sql", "--task", "x"])

    assert result.exit_code == 2
    assert "no example x" in result.output
    assert not workdir.exists()
