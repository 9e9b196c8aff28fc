"""Reward models as scorers: built from a route's `reward` spec when its configuration is
installed, run in the scoring worker's thread.

A `builtin` head is loaded from `<reward dir>/<head>/` (what `lora-gateway reward train`
writes) over the same embedding model the router uses, loaded once here, in the worker's
thread, and shared by every head; an `http` one is called at its URL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from gateway.quality.config import RewardSpec
from gateway.quality.reward import (
    INFO_FILE,
    EmbeddingReward,
    HttpReward,
    RewardModel,
    demo_data_dir,
    demo_pairs,
    demo_routes,
    train_reward,
)
from gateway.quality.verdict import MAX_ANSWER_CHARS, Verdict
from gateway.routing.embedder import Embedder


class RewardScorer:
    """A reward model as a scorer: the value is its score, with no pass or fail."""

    def __init__(self, name: str, model: RewardModel) -> None:
        self._name = name
        self.model = model

    @property
    def name(self) -> str:
        """The name its scores are stored under."""
        return self._name

    def __call__(self, answer: str, prompt: str = "") -> Verdict:
        """The model's score of `answer` to `prompt`."""
        score = self.model.score(prompt[:MAX_ANSWER_CHARS], answer[:MAX_ANSWER_CHARS])
        return Verdict(None, float(score), self.model.name)


class RewardLoader:
    """Builds reward scorers from their specs; the embedder is loaded at the first head."""

    def __init__(self, reward_dir: Path, embedder: Callable[[], Embedder]) -> None:
        self.reward_dir = reward_dir
        self._make_embedder = embedder
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def embedder(self) -> Embedder:
        """The shared embedding model (loaded once)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = self._make_embedder()
            return self._embedder

    def __call__(self, name: str, spec: RewardSpec) -> RewardScorer:
        """The scorer `name` of `spec`; raises when its model cannot be used."""
        if spec.model == "http":
            assert spec.url is not None
            return RewardScorer(
                name, HttpReward(spec.url, spec.served_model, timeout_s=spec.timeout_s)
            )
        assert spec.head is not None
        directory = self.reward_dir / spec.head
        if not directory.is_dir():
            raise FileNotFoundError(
                f"no reward head {spec.head!r} in {self.reward_dir} "
                "(train one with `lora-gateway reward train`)"
            )
        return RewardScorer(name, EmbeddingReward.load(directory, self.embedder()))


def ensure_demo_heads(reward_dir: Path, embedder: Embedder, *, seed: int = 0) -> list[Path]:
    """Train the demo routes' reward heads that are missing (a few seconds); their places."""
    data = demo_data_dir()
    places = []
    for route in demo_routes(data):
        place = reward_dir / route
        if not (place / INFO_FILE).is_file():
            head, _ = train_reward(demo_pairs(data, route, seed=seed), embedder, seed=seed)
            head.save(place)
        places.append(place)
    return places
