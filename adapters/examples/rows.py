"""What the example generators share: the row shape, seeded draws and the JSONL form."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import Final

Row = dict[str, str]
# A dataset's rows, or a text file's content, by its path inside the task's directory.
Files = dict[str, list[Row] | str]

# A generator gives up on a split after this many draws without a new prompt.
PATIENCE: Final = 10_000


def words(text: str) -> tuple[str, ...]:
    """The white-space separated words of `text` (pools are written as one string)."""
    return tuple(text.split())


def items(text: str) -> tuple[str, ...]:
    """The comma separated items of `text`."""
    return tuple(item.strip() for item in text.split(","))


def row(prompt: str, completion: str, system: str | None = None) -> Row:
    """One `prompt`/`completion` row (with a `system` prompt when there is one)."""
    out: Row = {"system": system} if system is not None else {}
    out.update(prompt=prompt, completion=completion)
    return out


def prompt_key(candidate: Row) -> str:
    """The row's prompt with case and white space folded: what makes two prompts the same."""
    return " ".join(candidate["prompt"].lower().split())


def draw_unique(
    count: int, make: Callable[[random.Random], Row], rng: random.Random, taken: set[str]
) -> list[Row]:
    """`count` rows from `make` whose prompts are in no earlier split (`taken` grows)."""
    rows: list[Row] = []
    for _ in range(PATIENCE):
        if len(rows) == count:
            return rows
        candidate = make(rng)
        key = prompt_key(candidate)
        if key not in taken:
            taken.add(key)
            rows.append(candidate)
    raise ValueError(f"only {len(rows)} distinct prompts of {count}: widen the pools")


def shuffled_unique(rows: list[Row], rng: random.Random, taken: set[str]) -> list[Row]:
    """`rows` in a seeded order, without those whose prompt an earlier split has (or that
    repeat one); `taken` grows."""
    order = list(rows)
    rng.shuffle(order)
    kept: list[Row] = []
    for candidate in order:
        key = prompt_key(candidate)
        if key not in taken:
            taken.add(key)
            kept.append(candidate)
    return kept


def shuffled_targets(rows: list[Row], seed: int) -> list[Row]:
    """The rows with every completion moved to another row (a seeded derangement)."""
    order = list(range(len(rows)))
    rng = random.Random(seed)
    while True:
        rng.shuffle(order)
        if all(rows[i]["completion"] != rows[j]["completion"] for i, j in enumerate(order)):
            break
    return [{**rows[i], "completion": rows[j]["completion"]} for i, j in enumerate(order)]


def jsonl(rows: Iterable[Row]) -> bytes:
    """The JSONL bytes of `rows`: one object per line, keys in the order written."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
