"""Verifiers and reward heads in a child process: their CPU never holds the gateway's GIL.

In the gateway's own process a scoring thread, however low its priority, holds the GIL
whenever it runs: the event loop then waits up to a switch interval at each of a request's
turns. The child (started with `spawn` at the first batch, at nice 19) builds each scorer
configuration it is sent once, from its text (reward heads loaded there), and evaluates
batches of (route, scorer, answer, prompt); the gateway's scoring thread only waits for it
(without the GIL); given the registry's URL, the child stores the scores too, on its own
connection, so the SQL work is off the gateway's GIL as well. A child that dies is started
again at the next batch; its batch is lost and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (route, scorer name, answer, prompt)
Ask = tuple[str, str, str, str]
# (passed, value, detail), or the error's text
Answer = tuple[bool | None, float, str] | str


@dataclass(frozen=True)
class ChildSettings:
    """What the child needs to load reward heads the way the gateway does."""

    reward_dir: Path
    cache_dir: Path
    model_path: Path | None
    tokenizer_path: Path | None
    max_tokens: int
    # The registry the scores are stored in (None: the parent stores them).
    database_url: str | None = None


# In the child: its settings, and checkers per configuration (by the text's sha256).
_child: dict[str, Any] = {}
_KEEP = 4


def _start_child(settings: ChildSettings) -> None:
    with contextlib.suppress(OSError):
        os.nice(19)
    _child["settings"] = settings
    _child["configs"] = {}


def _checkers(source: str) -> dict[tuple[str, str], Callable[[str, str], Any]]:
    from gateway.quality.config import parse_scorer_config
    from gateway.quality.rewards import RewardLoader
    from gateway.quality.scoring import Prepared
    from gateway.routing.embedder import load_embedder

    configs: dict[str, dict[tuple[str, str], Callable[[str, str], Any]]] = _child["configs"]
    key = hashlib.sha256(source.encode()).hexdigest()
    if key not in configs:
        settings: ChildSettings = _child["settings"]
        if "loader" not in _child:
            _child["loader"] = RewardLoader(
                settings.reward_dir,
                lambda: load_embedder(
                    settings.cache_dir,
                    model=settings.model_path,
                    tokenizer=settings.tokenizer_path,
                    max_tokens=settings.max_tokens,
                ),
            )
        prepared = Prepared.of(parse_scorer_config(source), _child["loader"])
        while len(configs) >= _KEEP:
            configs.pop(next(iter(configs)))
        configs[key] = {
            (route, checker.name): checker
            for route, pairs in prepared.verifiers.items()
            for checker, _ in pairs
        }
    return configs[key]


def evaluate(source: str, asks: Sequence[Ask]) -> list[Answer]:
    """Evaluate each ask with the scorer of that name in `source` (in the child)."""
    checkers = _checkers(source)
    answers: list[Answer] = []
    for route, name, answer, prompt in asks:
        try:
            verdict = checkers[(route, name)](answer, prompt)
            answers.append((verdict.passed, verdict.value, verdict.detail))
        except Exception:
            answers.append(traceback.format_exc(limit=5))
    return answers


def store(scores: Sequence[Any]) -> int:
    """Store scores with their aggregates (in the child, on its own connection)."""
    from gateway.registry.database import make_engine, session_factory
    from gateway.registry.quality import QualityStore

    if "store" not in _child:
        settings: ChildSettings = _child["settings"]
        assert settings.database_url is not None
        _child["store"] = QualityStore(session_factory(make_engine(settings.database_url)))
    stored: int = _child["store"].add_scores(scores)
    return stored


class ScoringProcess:
    """The child process, started at the first batch and again after it dies."""

    def __init__(self, settings: ChildSettings) -> None:
        self._settings = settings
        self._pool: ProcessPoolExecutor | None = None

    @property
    def stores(self) -> bool:
        """Whether the child stores the scores itself."""
        return self._settings.database_url is not None

    def evaluate(self, source: str, asks: Sequence[Ask]) -> list[Answer]:
        """Evaluate a batch in the child (blocks the calling thread, not the GIL)."""
        answers: list[Answer] = self._call(evaluate, source, list(asks))
        return answers

    def store(self, scores: Sequence[Any]) -> int:
        """Store scores in the child (its SQL work holds the child's GIL, not ours)."""
        stored: int = self._call(store, list(scores))
        return stored

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(self._settings,),
            )
        try:
            return self._pool.submit(fn, *args).result()
        except BrokenProcessPool:
            self.close()
            raise

    def close(self) -> None:
        """Stop the child."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
