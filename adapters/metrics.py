"""Task metrics of one answer against its reference, each a number in [0, 1].

- `exact_match`: the answer is the reference, with case and white space folded; two JSON
  documents match when they are equal as values (key order and spacing aside).
- `json_valid`, `schema_pass`, `verifier_pass`: the gateway's own verifiers (a JSON parse,
  the task's `json_schema` verifiers, all of the task's verifiers).
- `chrf`: chrF (character n-gram F-score, sacrebleu) against the reference, over 100.
- `sql_execution`: the answer, run on an SQLite database built from the task's fixture,
  gives the rows the reference gives (in any order); a statement that writes, fails or runs
  past a step budget scores 0.
- `contains`: the reference (folded) appears in the answer; the general-ability metric.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from adapters.contamination import fold
from gateway.quality.verdict import Verifier, VerifierSpecBase
from gateway.quality.verifiers import JsonSpec

# SQLite virtual machine steps between checks, and how many checks a query may take.
_SQL_STEPS: Final = 1000
_SQL_CHECKS: Final = 10_000
_FENCE = re.compile(r"\A\s*```[a-zA-Z]*[ \t]*\n(.*?)\n?[ \t]*```\s*\Z", re.S)


def unfence(text: str) -> str:
    """The text inside a surrounding ``` fence, else the text itself."""
    found = _FENCE.match(text)
    return found.group(1) if found else text


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(unfence(text))
    except (ValueError, RecursionError):
        return False, None


def same_json(a: Any, b: Any) -> bool:
    """JSON values equal as JSON: `true` is not `1` (Python's `==` says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer is the reference (folded), or the same JSON value."""
    if fold(answer) == fold(reference):
        return 1.0
    ok_a, a = _json(answer)
    ok_r, r = _json(reference)
    return 1.0 if ok_a and ok_r and same_json(a, r) else 0.0


def contains(answer: str, reference: str) -> float:
    """1.0 when the folded reference appears in the folded answer."""
    return 1.0 if fold(reference) in fold(answer) else 0.0


def chrf(answer: str, reference: str) -> float:
    """chrF of the answer against the reference, in [0, 1]."""
    from sacrebleu.metrics.chrf import CHRF

    return float(CHRF().sentence_score(answer, [reference]).score) / 100.0


_READING: Final = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _read_only(action: int, *args: object) -> int:
    return sqlite3.SQLITE_OK if action in _READING else sqlite3.SQLITE_DENY


class SqlRunner:
    """Runs read-only queries on an in-memory database built once from a fixture."""

    def __init__(self, fixture: str) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.executescript(fixture)
        self._db.execute("PRAGMA query_only = 1")
        # Answers are untrusted: no pragmas (query_only off), no ATTACH (files on disk),
        # nothing but reading.
        self._db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self._db.set_authorizer(_read_only)
        self._checks = 0
        self._db.set_progress_handler(self._tick, _SQL_STEPS)

    def _tick(self) -> int:
        self._checks += 1
        return 1 if self._checks > _SQL_CHECKS else 0

    def rows(self, query: str) -> Counter[tuple[Any, ...]] | None:
        """The query's rows as a multiset, or None when it does not run."""
        self._checks = 0
        try:
            cursor = self._db.execute(unfence(query).strip().rstrip(";"))
            return Counter(tuple(row) for row in cursor.fetchmany(10_000))
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError):
            return None

    def same(self, answer: str, reference: str) -> float:
        """1.0 when both run and give the same rows."""
        got = self.rows(answer)
        want = self.rows(reference)
        return 1.0 if got is not None and want is not None and got == want else 0.0


class TaskMetrics:
    """Scores answers on a task's metrics, with its verifiers built once."""

    def __init__(
        self,
        metrics: Sequence[str],
        verifiers: Sequence[VerifierSpecBase],
        sql_fixture: str | None = None,
    ) -> None:
        self.metrics = tuple(metrics)
        self._verifiers: list[Verifier] = [spec.build() for spec in verifiers]
        self._schemas = [v for v in self._verifiers if v.kind == "json_schema"]
        self._json = JsonSpec().build()
        self._sql = SqlRunner(sql_fixture) if sql_fixture is not None else None

    def score(self, answer: str, reference: str, prompt: str = "") -> dict[str, float]:
        """Every metric of one answer."""
        return {metric: self._one(metric, answer, reference, prompt) for metric in self.metrics}

    def failed_verifiers(self, answer: str, prompt: str = "") -> list[str]:
        """Names of the task's verifiers the answer fails, with why."""
        failed = []
        for verifier in self._verifiers:
            verdict = verifier(answer, prompt)
            if verdict.passed is False:
                failed.append(f"{verifier.name}: {verdict.detail}")
        return failed

    def _one(self, metric: str, answer: str, reference: str, prompt: str) -> float:
        if metric == "exact_match":
            return exact_match(answer, reference)
        if metric == "contains":
            return contains(answer, reference)
        if metric == "chrf":
            return chrf(answer, reference)
        if metric == "json_valid":
            return 1.0 if self._json(answer).passed else 0.0
        if metric == "schema_pass":
            return 1.0 if all(v(answer, prompt).passed for v in self._schemas) else 0.0
        if metric == "verifier_pass":
            return 1.0 if all(v(answer, prompt).passed for v in self._verifiers) else 0.0
        if metric == "sql_execution":
            if self._sql is None:
                raise ValueError("sql_execution needs the task's sql_fixture")
            return self._sql.same(answer, reference)
        raise ValueError(f"unknown metric {metric!r}")
