"""The `sql` verifier: one statement that compiles against the spec's schema, read-only by
default, and a schema that must itself run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.quality.config import parse_scorer_config
from gateway.quality.verdict import MAX_SCHEMA_CHARS, Verdict
from gateway.quality.verifier_sql import SqlSpec
from gateway.quality.verifiers import VerifierSpec, build

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    total REAL NOT NULL
);
"""
JOIN = (
    "SELECT c.name, SUM(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id "
    "GROUP BY c.name"
)
SPEC = TypeAdapter(VerifierSpec)


def spec_of(**fields: Any) -> Any:
    return SPEC.validate_python({"kind": "sql", "schema": SCHEMA, **fields})


def check(answer: str, **fields: Any) -> Verdict:
    return build(spec_of(**fields))(answer)


def refused(**fields: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        SPEC.validate_python({"kind": "sql", **fields})
    return [str(error["msg"]) for error in info.value.errors()]


def test_the_kind_picks_the_sql_spec_and_reads_only_by_default() -> None:
    spec = spec_of()
    assert isinstance(spec, SqlSpec)
    assert spec.read_only is True
    assert build(spec).name == "sql"


def test_a_select_that_fits_the_schema_passes() -> None:
    assert check(JOIN) == Verdict(True, 1.0, "compiles against the schema")
    assert check("SELECT name FROM customers WHERE city = 'Lyon';").passed


def test_an_unknown_column_fails_with_sqlites_message() -> None:
    verdict = check("SELECT email FROM customers")
    assert verdict.passed is False
    assert verdict.detail == "does not compile against the schema: no such column: email"


def test_an_unknown_table_and_bad_syntax_fail() -> None:
    assert "no such table: invoices" in check("SELECT * FROM invoices").detail
    assert "syntax error" in check("SELEKT name FROM customers").detail


def test_two_statements_fail_even_when_each_compiles() -> None:
    verdict = check("SELECT name FROM customers; SELECT total FROM orders")
    assert verdict == Verdict(False, 0.0, "more than one statement")


def test_a_trailing_semicolon_or_comment_is_still_one_statement() -> None:
    assert check("SELECT name FROM customers;\n").passed
    assert check("SELECT name FROM customers; -- all of them").passed


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ("INSERT INTO orders (customer_id, total) VALUES (1, 9.5)", "INSERT (orders)"),
        ("DROP TABLE customers", "DROP TABLE (customers)"),
        ("UPDATE orders SET total = 0", "UPDATE (orders)"),
        ("DELETE FROM orders", "DELETE (orders)"),
        ("CREATE TABLE notes (body TEXT)", "CREATE TABLE (notes)"),
        ("VACUUM", "VACUUM"),
    ],
)
def test_a_write_fails_when_read_only(answer: str, named: str) -> None:
    assert check(answer) == Verdict(False, 0.0, f"not read-only: {named}")


def test_a_write_that_compiles_passes_when_writes_are_allowed() -> None:
    assert check("INSERT INTO orders (customer_id, total) VALUES (1, 9.5)", read_only=False).passed
    assert check("DROP TABLE customers", read_only=False).passed
    assert "no such column: price" in check("UPDATE orders SET price = 1", read_only=False).detail


def test_a_pragma_is_never_compiled_because_compiling_it_acts() -> None:
    for read_only in (True, False):
        verdict = check("PRAGMA query_only = 0", read_only=read_only)
        assert verdict.passed is False
        assert verdict.detail.startswith("a PRAGMA")


def test_compiling_runs_nothing() -> None:
    verifier = build(spec_of(read_only=False))
    assert verifier("DROP TABLE customers").passed
    assert verifier("SELECT name FROM customers").passed


@pytest.mark.parametrize(
    "answer",
    [f"```sql\n{JOIN}\n```", f"```\n{JOIN};\n```", f"  ```SQL\n{JOIN}\n```\n"],
)
def test_fenced_sql_passes(answer: str) -> None:
    assert check(answer).passed


def test_an_empty_answer_is_no_statement() -> None:
    assert check("```sql\n\n```") == Verdict(False, 0.0, "no SQL statement")
    assert check("  ;  ").detail == "no SQL statement"


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        (
            "CREATE TABEL customers (id INTEGER)",
            'does not run in SQLite: near "TABEL": syntax error',
        ),
        ("CREATE VIEW v AS SELECT * FROM nowhere; SELECT * FROM v", "no such table"),
        ("ATTACH 'elsewhere.db' AS other", "does not run in SQLite: too many attached databases"),
        (
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
            "takes more than 1000000 SQLite steps",
        ),
    ],
)
def test_a_schema_that_does_not_run_is_refused_when_the_spec_is_built(
    schema: str, said: str
) -> None:
    (message,) = refused(schema=schema)
    assert message.startswith("Value error, ")
    assert said in message


def test_a_missing_empty_or_oversized_schema_is_refused() -> None:
    assert refused() == ["Field required"]
    assert refused(schema="") == ["String should have at least 1 character"]
    big = "-- padding\n" * (MAX_SCHEMA_CHARS // 11 + 1)
    assert refused(schema=big) == [f"String should have at most {MAX_SCHEMA_CHARS} characters"]


def test_pragmas_in_the_schema_are_skipped() -> None:
    spec = SPEC.validate_python({"kind": "sql", "schema": "PRAGMA foreign_keys = ON;" + SCHEMA})
    assert build(spec)(JOIN).passed


def test_the_scorer_configuration_takes_an_sql_verifier() -> None:
    source = (
        "routes:\n  sql:\n    scorers:\n"
        "      - kind: sql\n        name: compiles\n"
        "        schema: 'CREATE TABLE t (a INTEGER);'\n"
    )
    (scorer,) = parse_scorer_config(source).for_route("sql")
    assert scorer.verifier is not None
    assert scorer.verifier("SELECT a FROM t").passed
    assert not scorer.verifier("SELECT b FROM t").passed


def test_concurrent_calls_each_judge_their_own_answer() -> None:
    verifier = build(spec_of())
    answers = [JOIN, "SELECT email FROM customers", "DROP TABLE orders"] * 40
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(verifier, answers))
    assert [v.passed for v in verdicts] == [True, False, False] * 40
