"""A run's lineage record (`lineage.json` beside its adapter files): where the version went
after training, as a list of events, and its outcome.

`manifest.json` says what the adapter is and never changes (its hash is the artifact's
lineage); this record says what happened to it: registered as `name@N` on a gateway,
evaluated, rolled out, promoted or rolled back with the verdict. Writers take an exclusive
lock on a side file and replace the record atomically, so the hook receiver and a `run`
can both write it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class Lineage:
    """Read and append to one run's lineage record."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The record (empty when there is none yet)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"events": []}
        return data if isinstance(data, dict) else {"events": []}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(f".{self.path.name}.lock")
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append an event (and set the fields it names at the top level); return the record."""
        with self._locked():
            data = self.read()
            at = datetime.now(UTC).isoformat(timespec="seconds")
            data.setdefault("events", []).append({"event": event, "at": at, **fields})
            for key, value in fields.items():
                data[key] = value
            if event in {"promoted", "rolled_back", "refused_by_gates", "made_stable"}:
                data["outcome"] = {"event": event, "at": at}
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")
            tmp.replace(self.path)
        return data

    def has(self, event: str, **match: Any) -> bool:
        """Whether an event with these fields was recorded already."""
        return any(
            e.get("event") == event and all(e.get(k) == v for k, v in match.items())
            for e in self.read().get("events", [])
        )
