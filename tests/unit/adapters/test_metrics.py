from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from adapters.metrics import SqlRunner, TaskMetrics, chrf, contains, exact_match, unfence
from gateway.quality.verifiers import JsonSchemaSpec, RegexSpec

FIXTURE = """
CREATE TABLE people (name TEXT, city TEXT);
INSERT INTO people VALUES ('ann', 'paris'), ('bob', 'rome'), ('cyd', 'paris');
"""
RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def test_unfence_returns_the_text_inside_a_fence() -> None:
    assert unfence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert unfence("  ```\nSELECT 1\n```  ") == "SELECT 1"
    assert unfence("no fence") == "no fence"


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("Paris", "paris"),
        ("  The   capital\nis Paris ", "the capital is paris"),
        ('{"b": 2, "a": [1, 2]}', '{"a":[1,2],"b":2}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
    ],
)
def test_exact_match_folds_text_and_compares_json_as_values(answer: str, reference: str) -> None:
    assert exact_match(answer, reference) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("Lyon", "Paris"),
        ('{"a": 1}', '{"a": 2}'),
        ('{"a": 1}', '{"a": 1, "b": 2}'),
        ('"Paris"', "Paris"),
    ],
)
def test_exact_match_scores_a_different_answer_zero(answer: str, reference: str) -> None:
    assert exact_match(answer, reference) == 0.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [("true", "1"), ("false", "0"), ('{"ok": true}', '{"ok": 1}'), ("[false]", "[0.0]")],
)
def test_exact_match_does_not_take_a_json_boolean_for_a_number(answer: str, reference: str) -> None:
    # BUG (adapters/metrics.py:51): `a == r` compares with Python equality, where True == 1.
    assert exact_match(answer, reference) == 0.0


def test_contains_finds_the_folded_reference_in_the_answer() -> None:
    assert contains("I believe the capital is   PARIS, France.", "paris, france") == 1.0
    assert contains("It is Lyon.", "Paris") == 0.0


def test_chrf_is_one_for_the_reference_itself() -> None:
    assert chrf("The cat sat on the mat.", "The cat sat on the mat.") == pytest.approx(1.0)


def test_chrf_is_zero_for_text_sharing_no_characters() -> None:
    assert chrf("xyz", "abc") == 0.0


def test_chrf_ranks_a_near_answer_above_a_far_one_within_0_and_1() -> None:
    reference = "The cat sat on the mat."
    near = chrf("The cat sat on a mat.", reference)
    far = chrf("Dogs run in parks.", reference)

    assert 0.0 < far < near < 1.0


def test_sql_same_rows_in_any_order_match() -> None:
    runner = SqlRunner(FIXTURE)

    assert (
        runner.same(
            "SELECT name FROM people WHERE city = 'paris' ORDER BY name DESC",
            "SELECT name FROM people WHERE city = 'paris' ORDER BY name;",
        )
        == 1.0
    )


def test_sql_different_rows_do_not_match() -> None:
    runner = SqlRunner(FIXTURE)

    assert runner.same("SELECT name FROM people", "SELECT city FROM people") == 0.0


def test_sql_rows_are_a_multiset() -> None:
    runner = SqlRunner(FIXTURE)

    assert runner.rows("SELECT city FROM people") == Counter({("paris",): 2, ("rome",): 1})
    assert runner.same("SELECT DISTINCT city FROM people", "SELECT city FROM people") == 0.0


def test_sql_a_fenced_answer_is_run() -> None:
    runner = SqlRunner(FIXTURE)

    assert runner.same("```sql\nSELECT count(*) FROM people;\n```", "SELECT 3") == 1.0


def test_sql_a_query_that_fails_scores_zero() -> None:
    runner = SqlRunner(FIXTURE)

    assert runner.rows("SELECT nope FROM people") is None
    assert runner.same("SELECT nope FROM people", "SELECT nope FROM people") == 0.0


@pytest.mark.parametrize(
    "write",
    [
        "DELETE FROM people",
        "INSERT INTO people VALUES ('dan', 'oslo')",
        "DROP TABLE people",
        "UPDATE people SET city = 'x' RETURNING name",
    ],
)
def test_sql_writes_are_refused_and_change_nothing(write: str) -> None:
    runner = SqlRunner(FIXTURE)

    assert runner.rows(write) is None
    assert runner.rows("SELECT count(*) FROM people WHERE city != 'x'") == Counter({(3,): 1})


def test_sql_more_than_one_statement_is_refused() -> None:
    runner = SqlRunner(FIXTURE)

    assert runner.rows("SELECT 1; DELETE FROM people") is None
    assert runner.rows("SELECT count(*) FROM people") == Counter({(3,): 1})


def test_sql_a_runaway_query_is_stopped_and_the_next_one_runs() -> None:
    runner = SqlRunner(FIXTURE)
    started = time.monotonic()

    assert runner.rows(RUNAWAY) is None
    assert time.monotonic() - started < 5.0
    assert runner.rows("SELECT count(*) FROM people") == Counter({(3,): 1})


def test_sql_an_answer_cannot_turn_the_write_guard_off() -> None:
    # BUG (adapters/metrics.py:72): `PRAGMA query_only = 0` in an answer turns the guard off,
    # and a later answer's DELETE then empties the table every other row is scored against.
    runner = SqlRunner(FIXTURE)

    runner.rows("PRAGMA query_only = 0")
    runner.rows("DELETE FROM people")

    assert runner.rows("SELECT count(*) FROM people") == Counter({(3,): 1})


def test_sql_an_answer_cannot_reach_a_file(tmp_path: Path) -> None:
    # BUG (adapters/metrics.py:68-74): ATTACH is allowed, so an answer creates files on disk.
    runner = SqlRunner(FIXTURE)
    target = tmp_path / "attached.db"

    assert runner.rows(f"ATTACH DATABASE '{target}' AS other") is None
    assert not target.exists()


def test_task_metrics_scores_every_named_metric() -> None:
    metrics = TaskMetrics(["exact_match", "contains", "json_valid"], [])

    assert metrics.score('{"a": 1}', '{"a":1}') == {
        "exact_match": 1.0,
        "contains": 0.0,
        "json_valid": 1.0,
    }


def test_task_metrics_json_valid_fails_on_text() -> None:
    assert TaskMetrics(["json_valid"], []).score("not json", "x") == {"json_valid": 0.0}


SCHEMA = JsonSchemaSpec(schema={"type": "object", "required": ["city"]})
NO_SORRY = RegexSpec(name="no_sorry", must_not=["sorry"])


def test_task_metrics_schema_pass_applies_the_json_schema_verifiers_only() -> None:
    metrics = TaskMetrics(["schema_pass"], [SCHEMA, NO_SORRY])

    assert metrics.score('{"city": "sorry"}', "")["schema_pass"] == 1.0
    assert metrics.score('{"town": "paris"}', "")["schema_pass"] == 0.0


def test_task_metrics_verifier_pass_needs_every_verifier() -> None:
    metrics = TaskMetrics(["verifier_pass"], [SCHEMA, NO_SORRY])

    assert metrics.score('{"city": "paris"}', "")["verifier_pass"] == 1.0
    assert metrics.score('{"city": "sorry"}', "")["verifier_pass"] == 0.0
    assert metrics.score("paris", "")["verifier_pass"] == 0.0


def test_task_metrics_names_the_verifiers_an_answer_fails() -> None:
    metrics = TaskMetrics(["verifier_pass"], [SCHEMA, NO_SORRY])

    failed = metrics.failed_verifiers('{"town": "sorry"}')

    assert [f.split(":")[0] for f in failed] == ["json_schema", "no_sorry"]
    assert metrics.failed_verifiers('{"city": "paris"}') == []


def test_task_metrics_sql_execution_runs_on_the_fixture() -> None:
    metrics = TaskMetrics(["sql_execution"], [], FIXTURE)

    assert metrics.score("SELECT count(*) FROM people", "SELECT 3") == {"sql_execution": 1.0}
    assert metrics.score("SELECT count(*) FROM people", "SELECT 2") == {"sql_execution": 0.0}


def test_task_metrics_sql_execution_without_a_fixture_is_an_error() -> None:
    with pytest.raises(ValueError, match="sql_fixture"):
        TaskMetrics(["sql_execution"], []).score("SELECT 1", "SELECT 1")


def test_task_metrics_refuses_an_unknown_metric() -> None:
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        TaskMetrics(["bleu"], []).score("a", "a")
