"""Datasets: JSONL files of chat `messages` or `prompt`/`completion` rows.

A row is one of
  {"messages": [{"role": "system", "content": ...}, {"role": "user", ...},
                {"role": "assistant", ...}]}
  {"prompt": "...", "completion": "..."}        (optionally "system": "...")
and may carry an `id` and a `meta` mapping, which are kept out of training. The last message
is the completion (the only part that carries loss); the messages before it end with the
user's. Every problem is reported with its file and line, all at once (up to a limit).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from adapters.spec import SpecError
from adapters.train import Example

MAX_PROBLEMS: Final = 20
MAX_ROWS: Final = 1_000_000
_ROLES: Final = ("system", "user", "assistant")
_EXTRA: Final = frozenset({"id", "meta"})


@dataclass(frozen=True)
class Dataset:
    """The rows of one file, with the file's hash (of its bytes, as read)."""

    path: Path
    rows: tuple[Example, ...]
    sha256: str

    def lineage(self, root: Path) -> dict[str, Any]:
        """What the manifest records of this file."""
        try:
            shown = str(self.path.relative_to(root))
        except ValueError:
            shown = str(self.path)
        return {"path": shown, "sha256": self.sha256, "rows": len(self.rows)}


def read_dataset(path: Path) -> Dataset:
    """Read one JSONL file; `SpecError` lists every bad line (`file:line: problem`)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc}"]) from exc
    problems: list[str] = []
    rows: list[Example] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(rows) >= MAX_ROWS:
            problems.append(f"{path}:{number}: more than {MAX_ROWS} rows")
            break
        try:
            rows.append(parse_row(line))
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"{path}: stopped after {MAX_PROBLEMS} problems")
                break
    if not rows and not problems:
        problems.append(f"{path}:1: the file holds no rows")
    if problems:
        raise SpecError(problems)
    return Dataset(path, tuple(rows), hashlib.sha256(raw).hexdigest())


def parse_row(line: bytes) -> Example:
    """One JSONL line as an example; ValueError says what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError("a row is a JSON object")
    if "messages" in row:
        return _from_messages(row)
    if "prompt" in row or "completion" in row:
        return _from_pair(row)
    raise ValueError('a row needs "messages", or "prompt" and "completion"')


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{key}" must be a non-empty string')
    if "\x00" in value:
        raise ValueError(f'"{key}" holds a NUL character')
    return value


def _unknown(row: dict[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(row) - known - _EXTRA)
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, extra))}")
    if "meta" in row and not isinstance(row["meta"], dict):
        raise ValueError('"meta" must be a mapping')


def _from_pair(row: dict[str, Any]) -> Example:
    _unknown(row, frozenset({"prompt", "completion", "system"}))
    history = (("system", _text(row, "system")),) if "system" in row else ()
    return Example(_text(row, "prompt"), _text(row, "completion"), history)


def _from_messages(row: dict[str, Any]) -> Example:
    _unknown(row, frozenset({"messages"}))
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError('"messages" must be a list of at least a user and an assistant message')
    pairs: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
            raise ValueError(f"messages[{index}] must be {{role, content}}")
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(f"messages[{index}].role must be one of {', '.join(_ROLES)}")
        try:
            pairs.append((role, _text(message, "content")))
        except ValueError as exc:
            raise ValueError(f"messages[{index}].{exc}") from None
    if pairs[-1][0] != "assistant":
        raise ValueError("the last message must be the assistant's (the completion)")
    if pairs[-2][0] != "user":
        raise ValueError("the message before the completion must be the user's")
    return Example(pairs[-2][1], pairs[-1][1], tuple(pairs[:-2]))


def split_held_out(
    rows: Sequence[Example], share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(training rows, held-out rows): a seeded share of the rows, at least one of each."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = min(max(1, round(len(rows) * share)), len(rows) - 1)
    held = set(order[:count])
    if len(rows) < 2:
        raise SpecError(["evaluation.held_out.share: needs at least two training rows"])
    train = [row for index, row in enumerate(rows) if index not in held]
    return train, [rows[index] for index in sorted(held)]
