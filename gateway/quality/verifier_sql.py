"""The `sql` verifier: one statement that compiles against a schema in SQLite and, when asked,
only reads. The schema runs in an in-memory database of the verifier's own, reaches no file
and has a step budget; the statement is compiled (`EXPLAIN`), never run."""

from __future__ import annotations

import re
import sqlite3
from functools import partial
from typing import Any, Final, Literal

from pydantic import Field, field_validator

from gateway.quality.verdict import MAX_SCHEMA_CHARS, Check, Verdict, VerifierSpecBase, cut, verdict

# SQLite virtual-machine steps between progress checks, and the checks a run may take: a
# schema (or anything else the verifier runs) stops after about a million steps.
_SQL_STEPS: Final = 1_000
_SQL_CHECKS: Final = 1_000
_SQL_FENCE = re.compile(r"\A\s*```[ \t]*(?:sql|sqlite)?[ \t]*\n(.*?)\n?[ \t]*```\s*\Z", re.S | re.I)
# The authorizer's actions a read-only statement may take.
_SQL_READS: Final = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_SQL_ACTIONS: Final = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        *("ALTER_TABLE", "ANALYZE", "ATTACH", "DETACH", "DELETE", "INSERT", "UPDATE", "PRAGMA"),
        *("REINDEX", "SAVEPOINT", "TRANSACTION", "CREATE_VTABLE", "DROP_VTABLE"),
        *(
            f"{verb}_{temp}{thing}"
            for verb in ("CREATE", "DROP")
            for temp in ("", "TEMP_")
            for thing in ("INDEX", "TABLE", "TRIGGER", "VIEW")
        ),
    )
}


class _StepBudget:
    """A progress handler that stops SQLite after `_SQL_CHECKS` calls (one connection's)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return 1 if self.calls > _SQL_CHECKS else 0

    @property
    def spent(self) -> bool:
        return self.calls > _SQL_CHECKS


def _sql_connection() -> tuple[sqlite3.Connection, _StepBudget]:
    db = sqlite3.connect(":memory:")
    # No file is reached: ATTACH, and VACUUM INTO (which attaches its target), fail.
    db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    budget = _StepBudget()
    db.set_progress_handler(budget, _SQL_STEPS)
    return db, budget


def _schema_authorizer(action: int, *args: object) -> int:
    # A pragma acts when it is compiled and may reach past the connection: skip them all.
    return sqlite3.SQLITE_IGNORE if action == sqlite3.SQLITE_PRAGMA else sqlite3.SQLITE_OK


def schema_image(schema: str) -> bytes:
    """The database `schema` builds in memory, serialized; ValueError when it does not run."""
    db, budget = _sql_connection()
    db.set_authorizer(_schema_authorizer)
    try:
        db.executescript(schema)
        # Serializing reads the page count with a pragma of its own.
        db.set_authorizer(None)
        return db.serialize()
    except (sqlite3.Error, sqlite3.Warning, OverflowError, ValueError) as exc:
        if budget.spent:
            raise ValueError(f"takes more than {_SQL_STEPS * _SQL_CHECKS} SQLite steps") from exc
        raise ValueError(f"does not run in SQLite: {exc}") from exc
    finally:
        db.close()


def _record(
    read_only: bool, seen: list[tuple[int, str | None]], action: int, target: str | None, *_: object
) -> int:
    # EXPLAIN compiles without running, so recording a write is enough; a pragma, though,
    # acts when it is compiled.
    if action == sqlite3.SQLITE_PRAGMA:
        seen.append((action, target))
        return sqlite3.SQLITE_DENY
    if read_only and action not in _SQL_READS:
        seen.append((action, target))
    return sqlite3.SQLITE_OK


def _write_named(seen: list[tuple[int, str | None]], program: list[Any]) -> str | None:
    """What a read-only statement may not do, named; None when it only reads."""
    # A DROP TABLE first deletes from sqlite_master: name the statement's own table.
    own = [item for item in seen if not (item[1] or "").startswith("sqlite_")]
    if seen:
        action, target = (own or seen)[0]
        words = _SQL_ACTIONS.get(action, f"action {action}")
        return f"{words} ({target})" if target else words
    # What the authorizer is not asked about, the compiled program shows.
    opcodes = {row[1] for row in program}
    if "Vacuum" in opcodes:
        return "VACUUM"
    if any(row[1] == "Transaction" and row[3] != 0 for row in program):
        return "a write transaction"
    return None


def _check_sql(image: bytes, read_only: bool, text: str, length: int) -> Verdict:
    fenced = _SQL_FENCE.match(text)
    statement = (fenced.group(1) if fenced else text).strip().rstrip(";").rstrip()
    if not statement:
        return verdict(False, "no SQL statement" + cut(length))
    if "\x00" in statement:
        return verdict(False, "holds a NUL character")
    seen: list[tuple[int, str | None]] = []
    db, budget = _sql_connection()
    try:
        db.deserialize(image)
        if read_only:
            db.execute("PRAGMA query_only = 1")
        db.set_authorizer(partial(_record, read_only, seen))
        program = db.execute("EXPLAIN " + statement).fetchall()
    except sqlite3.ProgrammingError as exc:
        if "one statement" in str(exc):
            return verdict(False, "more than one statement" + cut(length))
        return verdict(False, f"does not compile against the schema: {exc}{cut(length)}")
    except (sqlite3.Error, sqlite3.Warning, OverflowError, ValueError) as exc:
        if seen and seen[-1][0] == sqlite3.SQLITE_PRAGMA:
            return verdict(False, "a PRAGMA (it acts when compiled: not verified)")
        if budget.spent:
            return verdict(False, f"takes more than {_SQL_STEPS * _SQL_CHECKS} SQLite steps")
        return verdict(False, f"does not compile against the schema: {exc}{cut(length)}")
    finally:
        db.close()
    write = _write_named(seen, program) if read_only else None
    if write is not None:
        return verdict(False, f"not read-only: {write}{cut(length)}")
    return verdict(True, "compiles against the schema")


class SqlSpec(VerifierSpecBase):
    """`sql`: the answer (a surrounding ``` or ```sql fence stripped) is one SQL statement
    that compiles against `schema` in SQLite (`EXPLAIN`: compiled, never run) and, when
    `read_only`, only reads. The schema runs when the spec is checked and once more when it
    is built, never per answer; pragmas in it are skipped and it reaches no file."""

    kind: Literal["sql"] = "sql"
    # SQLite DDL (seed rows may follow); `schema` would shadow a BaseModel method.
    sql_schema: str = Field(alias="schema", min_length=1, max_length=MAX_SCHEMA_CHARS)
    read_only: bool = True

    @field_validator("sql_schema")
    @classmethod
    def _runs(cls, schema: str) -> str:
        schema_image(schema)
        return schema

    def _check(self) -> Check:
        # Each call deserializes a fresh copy into its own connection: threads share bytes only.
        return partial(_check_sql, schema_image(self.sql_schema), self.read_only)
