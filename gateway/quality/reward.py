"""Reward models: `score(prompt, answer) -> float`, higher is better.

- `HttpReward`: a reward model served elsewhere, asked through vLLM's score API.
- `EmbeddingReward`: the built-in head, a Bradley-Terry (pairwise logistic) linear score over
  the router's sentence embeddings: no torch here, one embedding of the prompt and one of the
  answer per score. Trained by `train_reward` from preference pairs, stored as a directory
  holding `reward.npz` (the weights) and `reward.json` (what it was trained from and how well
  it did on held-out prompts).

Features, for unit vectors p = e(prompt) and a = e(answer) of width d:
concat(a, p * a * sqrt(d)). The first half says what kind of answer it is (its language,
voice, register); the second lets the score depend on the prompt: a weight vector of ones
over it is the cosine of prompt and answer, so a linear head can reward answers about the
question asked. sqrt(d) gives both halves a comparable norm (the products are ~1/sqrt(d)),
so one L2 penalty suits both. With the answer's half alone a head cannot tell which of two
answers fits the prompt: on the demo's `other_prompt` pairs it is exactly at chance.

Errors:

RewardError             scoring failed: the reward server's call, or its reply
└── ArtifactError       a head's files are missing, unreadable, or for another embedder
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import numpy as np

from gateway.routing.embedder import Embedder, OnnxEmbedder, Vectors, file_sha256

FORMAT: Final = 1
FEATURES: Final = "concat(e(answer), e(prompt)*e(answer)*sqrt(d))"
WEIGHTS_FILE: Final = "reward.npz"
INFO_FILE: Final = "reward.json"
# L2 strength of the logistic regression (scikit-learn's C). The default: on the demo pairs
# 1 and 10 do as well, 0.1 and below worse.
C: Final = 1.0
EMBED_CHUNK: Final = 32
DEFAULT_TIMEOUT_S: Final = 10.0

# `progress(done, total)`: texts embedded so far.
Progress = Callable[[int, int], None]


class RewardModel(Protocol):
    """Scores an answer to a prompt; safe to call from several threads at once."""

    name: str

    def score(self, prompt: str, answer: str) -> float: ...


class RewardError(RuntimeError):
    """A reward could not be computed."""


class ArtifactError(RewardError):
    """A reward head's files are missing, unreadable or do not fit the embedder in use."""


class HttpReward:
    """A reward model behind vLLM's `POST /score` (a sequence-classification reward model
    served with `--runner pooling --convert classify`, or a cross-encoder):
    `{"model", "text_1": prompt, "text_2": answer}` gives `{"data": [{"score": x, ...}]}`.
    The server joins the two texts by the model's score template, else as a tokenizer text
    pair. `/score` rather than `/pooling`: its reply is one number per pair whatever the
    model, where `/pooling` answers a list per class (or per token) in a model-specific shape.

    `url` is the server's root (vLLM serves `/score` there; `/v1/score` is its deprecated
    alias). A one-label classifier's score is its sigmoid by default: ranks are unchanged."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"http:{model}" if model else "http"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        # httpx.Client's connection pool is thread-safe: one client serves every worker.
        self._client = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    def score(self, prompt: str, answer: str) -> float:
        """The server's score of `answer` to `prompt`; RewardError if it gives none."""
        body: dict[str, Any] = {"text_1": prompt, "text_2": answer}
        if self.model is not None:
            body["model"] = self.model
        where = f"{self.url}/score"
        try:
            response = self._client.post(where, json=body)
        except httpx.HTTPError as exc:
            raise RewardError(f"reward model at {where}: {str(exc) or type(exc).__name__}") from exc
        if response.is_error:
            raise RewardError(
                f"reward model at {where} answered {response.status_code}: {_message(response)}"
            )
        try:
            value = float(response.json()["data"][0]["score"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RewardError(
                f"reward model at {where}: no data[0].score in {response.text[:200]!r}"
            ) from exc
        if not math.isfinite(value):
            raise RewardError(f"reward model at {where}: score {value} is not finite")
        return value

    def close(self) -> None:
        """Close the connections."""
        self._client.close()


def _message(response: httpx.Response) -> str:
    try:
        # vLLM's (and OpenAI's) error shape.
        return str(response.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:200] or response.reason_phrase


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """`chosen` is a better answer to `prompt` than `rejected`. Pairs of one `group` (by
    default, of one prompt) stay on one side of the held-out split; `source` names where
    the preference came from (feedback, judge, verifier, ...) for the report."""

    prompt: str
    chosen: str
    rejected: str
    group: str | None = None
    source: str = ""


def read_pairs(path: Path) -> list[PreferencePair]:
    """JSONL rows `{"prompt", "chosen", "rejected"}` (optional "group", "source")."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts = [row[key] for key in ("prompt", "chosen", "rejected")]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}:{number}: not a JSON object with prompt, chosen, rejected"
            ) from exc
        group, source = row.get("group"), row.get("source", "")
        if not all(isinstance(t, str) for t in texts) or not isinstance(source, str):
            raise ValueError(f"{path}:{number}: prompt, chosen, rejected and source are strings")
        prompt, chosen, rejected = texts
        pairs.append(
            PreferencePair(prompt, chosen, rejected, None if group is None else str(group), source)
        )
    return pairs


def data_sha256(pairs: Iterable[PreferencePair]) -> str:
    """A hash of the pairs, in order (the split depends on the order too)."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(asdict(pair), sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


@functools.cache
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def embedder_id(embedder: Embedder) -> str:
    """What a head's features depend on besides the texts: for the gateway's embedder, its
    model and tokenizer files and token window; any other embedder's `embedder_id`."""
    if isinstance(embedder, OnnxEmbedder):
        parts = [embedder.window]
        for path in (embedder.model_path, embedder.tokenizer_path):
            stat = path.stat()
            parts.append(_file_hash(path, stat.st_size, stat.st_mtime_ns))
        return "onnx-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    named = getattr(embedder, "embedder_id", None)
    if not isinstance(named, str):
        raise TypeError(f"{type(embedder).__name__} has no embedder_id to key reward heads by")
    return named


def features(prompts: Vectors, answers: Vectors) -> Vectors:
    """One row of `FEATURES` per (prompt, answer) row pair."""
    scale = np.float32(math.sqrt(answers.shape[1]))
    rows: Vectors = np.concatenate([answers, prompts * answers * scale], axis=1)
    return rows


@dataclass(frozen=True)
class TrainReport:
    """What a head was trained from and how well it ranks pairs of prompts it never saw."""

    pairs: int
    train_pairs: int
    heldout_pairs: int
    heldout_groups: int
    # Share of held-out pairs whose chosen answer scores above the rejected one; None
    # without held-out pairs.
    heldout_accuracy: float | None
    heldout_by_source: dict[str, float]
    data_sha256: str
    seed: int
    embed_seconds: float
    train_seconds: float  # everything: embedding, fitting, held-out scoring


class EmbeddingReward:
    """The built-in head: w · features(e(prompt), e(answer)). The difference of two answers'
    scores is the log-odds that the first is preferred."""

    def __init__(
        self,
        weights: Vectors,
        embedder: Embedder,
        report: TrainReport,
        *,
        embedder_key: str,
        created_at: str | None = None,
    ) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        self.embedder = embedder
        self.report = report
        self.embedder_key = embedder_key
        self.created_at = created_at or datetime.now(UTC).isoformat(timespec="seconds")
        digest = hashlib.sha256(self.weights.tobytes())
        digest.update(f"{embedder_key}\0{FEATURES}".encode())
        self.version = digest.hexdigest()[:12]
        self.name = f"builtin:{self.version}"

    def score(self, prompt: str, answer: str) -> float:
        """The answer's reward (a log-odds scale: only differences mean something)."""
        vectors = self.embedder.embed([prompt, answer])
        return float((features(vectors[:1], vectors[1:]) @ self.weights)[0])

    def info(self) -> dict[str, Any]:
        """`reward.json`'s content."""
        return {
            "format": FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "embedder": self.embedder_key,
            "features": FEATURES,
            "weights_sha256": hashlib.sha256(self.weights.tobytes()).hexdigest(),
            **asdict(self.report),
        }

    def save(self, directory: Path) -> None:
        """Write the head to `directory`, replacing what was there: the files are written
        into a new directory beside it, which then takes its place (a failure leaves the
        old head, or none, never half of one)."""
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-new-"))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the head from other users
            with (staging / WEIGHTS_FILE).open("wb") as handle:
                np.savez(handle, allow_pickle=False, weights=self.weights)
            (staging / INFO_FILE).write_text(json.dumps(self.info(), indent=2) + "\n")
            _swap_in(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: Path, embedder: Embedder) -> EmbeddingReward:
        """The head saved in `directory`; ArtifactError unless it was trained on the
        features of this very embedder."""
        try:
            info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
            with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as stored:
                weights = np.asarray(stored["weights"], dtype=np.float32)
            fields = TrainReport.__dataclass_fields__
            report = TrainReport(**{k: v for k, v in info.items() if k in fields})
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"no readable reward head in {directory}: {exc}") from exc
        if info.get("format") != FORMAT or info.get("features") != FEATURES:
            raise ArtifactError(
                f"the reward head in {directory} has format {info.get('format')} and features "
                f"{info.get('features')!r}; this gateway reads {FORMAT} and {FEATURES!r}"
            )
        if hashlib.sha256(weights.tobytes()).hexdigest() != info.get("weights_sha256"):
            raise ArtifactError(f"{directory}/{WEIGHTS_FILE} is not the file {INFO_FILE} names")
        key = embedder_id(embedder)
        if info.get("embedder") != key:
            raise ArtifactError(
                f"the reward head in {directory} was trained on embedder {info.get('embedder')}, "
                f"but embedder {key} is in use: train it again with this embedder"
            )
        head = cls(weights, embedder, report, embedder_key=key, created_at=info.get("created_at"))
        if head.version != info.get("version"):
            raise ArtifactError(f"the reward head in {directory} is not version {head.version}")
        return head


def _swap_in(staging: Path, directory: Path) -> None:
    # A directory cannot be renamed over another: the old one is moved aside first. A reader
    # between the two renames finds no head (and may retry); never a mix of two.
    if not directory.exists():
        staging.rename(directory)
        return
    aside = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-old-"))
    os.rename(directory, aside / "head")
    try:
        staging.rename(directory)
    except BaseException:
        os.rename(aside / "head", directory)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def split_pairs(
    pairs: Sequence[PreferencePair], heldout_share: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair], int]:
    """Train and held-out pairs, and the number of held-out units. A unit is every pair
    linked by a prompt (compared with case and spacing folded) or a group: no prompt and no
    group is on both sides. At least one unit is held out when there are two or more."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for pair in pairs:
        prompt = root("p:" + " ".join(pair.prompt.split()).casefold())
        if pair.group is not None:
            parent[root("g:" + pair.group)] = prompt
    units = [root("p:" + " ".join(pair.prompt.split()).casefold()) for pair in pairs]
    distinct = list(dict.fromkeys(units))
    count = min(round(heldout_share * len(distinct)), len(distinct) - 1)
    if heldout_share > 0 and len(distinct) > 1:
        count = max(count, 1)
    order = np.random.default_rng(seed).permutation(len(distinct))
    held = {distinct[i] for i in order[:count]}
    train = [pair for pair, unit in zip(pairs, units, strict=True) if unit not in held]
    heldout = [pair for pair, unit in zip(pairs, units, strict=True) if unit in held]
    return train, heldout, len(held)


def _embed_once(
    embedder: Embedder, texts: list[str], progress: Progress | None
) -> dict[str, Vectors]:
    """Each distinct text embedded once."""
    todo = list(dict.fromkeys(texts))
    rows: dict[str, Vectors] = {}
    for start in range(0, len(todo), EMBED_CHUNK):
        chunk = todo[start : start + EMBED_CHUNK]
        rows.update(zip(chunk, embedder.embed(chunk), strict=True))
        if progress is not None:
            progress(start + len(chunk), len(todo))
    return rows


def train_reward(
    pairs: Sequence[PreferencePair],
    embedder: Embedder,
    *,
    seed: int = 0,
    heldout_share: float = 0.2,
    progress: Progress | None = None,
) -> tuple[EmbeddingReward, TrainReport]:
    """Fit a head on the pairs outside a held-out share of prompt groups and measure it on
    those. The head returned is the one measured (not refitted on every pair), so the
    accuracy it carries is its own. `progress(done, total)` follows the embedding."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if not 0.0 <= heldout_share < 1.0:
        raise ValueError("heldout_share must be in [0, 1)")
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    train, heldout, groups = split_pairs(pairs, heldout_share, seed)
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    vectors = _embed_once(embedder, texts, progress)
    embedded = time.perf_counter()

    def sides(some: Sequence[PreferencePair]) -> tuple[Vectors, Vectors]:
        prompts = np.stack([vectors[p.prompt] for p in some])
        return (
            features(prompts, np.stack([vectors[p.chosen] for p in some])),
            features(prompts, np.stack([vectors[p.rejected] for p in some])),
        )

    better, worse = sides(train)
    # Bradley-Terry: P(chosen > rejected) = sigmoid(w · (f(chosen) - f(rejected))). Each
    # difference is shown both ways round, so the fit has no intercept and no side to favour.
    differences = better - worse
    x = np.concatenate([differences, -differences])
    y = np.concatenate([np.ones(len(differences)), np.zeros(len(differences))])
    model = LogisticRegression(C=C, fit_intercept=False, max_iter=2000).fit(x, y)
    weights = model.coef_[0].astype(np.float32)

    accuracy, by_source = None, {}
    if heldout:
        better, worse = sides(heldout)
        wins = (better @ weights) > (worse @ weights)
        accuracy = float(wins.mean())
        for source in sorted({p.source for p in heldout}):
            mask = np.array([p.source == source for p in heldout])
            by_source[source] = float(wins[mask].mean())
    report = TrainReport(
        pairs=len(pairs),
        train_pairs=len(train),
        heldout_pairs=len(heldout),
        heldout_groups=groups,
        heldout_accuracy=accuracy,
        heldout_by_source=by_source,
        data_sha256=data_sha256(pairs),
        seed=seed,
        embed_seconds=round(embedded - started, 3),
        train_seconds=round(time.perf_counter() - started, 3),
    )
    return EmbeddingReward(weights, embedder, report, embedder_key=embedder_id(embedder)), report


def demo_data_dir() -> Path:
    """The demo adapters' datasets (`adapters/demo/*.jsonl`). Located, not imported: the
    gateway reads the data files and never runs the training package's code."""
    spec = find_spec("adapters")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the adapters package (with its demo datasets) is not installed")
    return Path(spec.origin).parent / "demo"


def demo_routes(directory: Path) -> list[str]:
    """The demo routes: one per `<style>.jsonl` of `directory`."""
    return sorted(path.stem for path in directory.glob("*.jsonl"))


def demo_pairs(
    directory: Path, route: str, *, seed: int = 0, group_size: int = 4
) -> list[PreferencePair]:
    """Preference pairs for one demo route's head: its answers in its own style preferred.

    The datasets answer the same prompts, each in one style (no plain-English answers).
    Prompts are shuffled into groups of `group_size` (the last group takes the remainder).
    For each prompt, the route's answer is chosen over
    - the other styles' answers to the same prompt (source `other_style`), and
    - the route's answers to the other prompts of its group (source `other_prompt`),
    so the head rewards answers in the route's style that answer the question asked. A
    group is held out or trained on whole: no held-out pair shares a text with training.
    """
    answers: dict[str, dict[str, str]] = {}
    for style in demo_routes(directory):
        lines = (directory / f"{style}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        answers[style] = {str(row["prompt"]): str(row["response"]) for row in rows}
    if route not in answers:
        raise ValueError(f"no demo dataset for route {route!r} in {directory}")
    prompts = [p for p in answers[route] if all(p in other for other in answers.values())]
    order = [prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))]
    starts = range(0, max(len(order) - group_size, 0) + 1, group_size)
    groups = [order[s : s + group_size] for s in starts]
    groups[-1].extend(order[len(groups) * group_size :])
    own = answers[route]
    pairs = []
    for number, members in enumerate(groups):
        group = f"demo-{number}"
        for prompt in members:
            pairs += [
                PreferencePair(prompt, own[prompt], answers[style][prompt], group, "other_style")
                for style in answers
                if style != route
            ]
            pairs += [
                PreferencePair(prompt, own[prompt], own[other], group, "other_prompt")
                for other in members
                if other != prompt
            ]
    return pairs
