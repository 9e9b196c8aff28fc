"""Reward models: the HTTP client of a score endpoint, and the built-in head (training,
held-out split, artifact, demo pairs, the command)."""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import gateway.cli.reward as reward_cli
from gateway.config import DEFAULT_CACHE_DIR
from gateway.quality.reward import (
    FEATURES,
    ArtifactError,
    EmbeddingReward,
    HttpReward,
    PreferencePair,
    RewardError,
    RewardModel,
    demo_data_dir,
    demo_pairs,
    demo_routes,
    read_pairs,
    split_pairs,
    train_reward,
)
from gateway.routing.embedder import Vectors

WORD = re.compile(r"[a-z']+")
DIMENSIONS = 256


class HashingEmbedder:
    """Bag of words: each word adds 1 at crc32(word) % 256; rows are L2-normalised."""

    def __init__(self, embedder_id: str = "hashing-bow-v1") -> None:
        self.embedder_id = embedder_id

    def embed(self, texts: list[str]) -> Vectors:
        rows = np.zeros((len(texts), DIMENSIONS), np.float32)
        for row, text in enumerate(texts):
            for word in WORD.findall(text.lower()):
                rows[row, zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
            rows[row] /= max(float(np.linalg.norm(rows[row])), 1e-12)
        return rows


FILLER = [
    "water", "light", "trees", "river", "stone", "city", "music", "garden", "bread", "winter",
    "paper", "cloud", "window", "horse", "bridge", "market", "silver", "ocean", "forest",
    "candle", "road", "engine", "planet", "story", "field", "summer",
]  # fmt: skip
# Hashed to a slot no filler or prompt word shares (crc32 % 256).
KEYWORD = "gladly"


def keyword_pairs(prompts: int = 60, per_prompt: int = 3, seed: int = 1) -> list[PreferencePair]:
    """Answers of random filler words; the chosen one also says the keyword."""
    rng = random.Random(seed)
    pairs = []
    for number in range(prompts):
        prompt = f"Question {number}: tell me about {rng.choice(FILLER)} and {rng.choice(FILLER)}."
        for _ in range(per_prompt):
            chosen = " ".join([KEYWORD, *rng.sample(FILLER, 8)])
            rejected = " ".join(rng.sample(FILLER, 9))
            pairs.append(PreferencePair(prompt, chosen, rejected, source="synthetic"))
    return pairs


# -- HttpReward ------------------------------------------------------------------------


def score_server(
    reply: Callable[[httpx.Request], httpx.Response],
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return reply(request)

    return httpx.MockTransport(handle), seen


def vllm_score(value: Any) -> httpx.Response:
    # vLLM's ScoreResponse, as `/score` answers it.
    return httpx.Response(
        200,
        json={
            "id": "score-1",
            "object": "list",
            "created": 0,
            "model": "rm",
            "data": [{"index": 0, "object": "score", "score": value}],
            "usage": {"prompt_tokens": 12, "total_tokens": 12},
        },
    )


def test_http_reward_posts_the_pair_to_score_and_reads_data_0_score() -> None:
    transport, seen = score_server(lambda _: vllm_score(0.73))
    reward: RewardModel = HttpReward("http://rm.test/", "rm", api_key="secret", transport=transport)
    assert reward.score("How are you?", "Fine, thanks.") == pytest.approx(0.73)
    assert reward.name == "http:rm"
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://rm.test/score"
    assert request.headers["authorization"] == "Bearer secret"
    assert json.loads(request.content) == {
        "model": "rm",
        "text_1": "How are you?",
        "text_2": "Fine, thanks.",
    }


def test_http_reward_without_a_model_name_leaves_it_to_the_server() -> None:
    transport, seen = score_server(lambda _: vllm_score(-1.5))
    assert HttpReward("http://rm.test", transport=transport).score("q", "a") == -1.5
    assert "model" not in json.loads(seen[0].content)
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (
            httpx.Response(
                400, json={"error": {"message": "The model does not support Score API"}}
            ),
            "answered 400: The model does not support Score API",
        ),
        (httpx.Response(503, text="upstream down"), "answered 503: upstream down"),
        (httpx.Response(200, json={"data": []}), "no data[0].score"),
        (httpx.Response(200, text="<html>not json</html>"), "no data[0].score"),
        (vllm_score("high"), "no data[0].score"),
        # Python's JSON reader takes NaN and Infinity, though JSON has neither.
        (httpx.Response(200, text='{"data": [{"index": 0, "score": NaN}]}'), "not finite"),
    ],
)
def test_http_reward_turns_a_bad_reply_into_a_reward_error(
    reply: httpx.Response, said: str
) -> None:
    transport, _ = score_server(lambda _: reply)
    with pytest.raises(RewardError, match=re.escape(said)):
        HttpReward("http://rm.test", "rm", transport=transport).score("q", "a")


def test_http_reward_turns_a_failed_connection_into_a_reward_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport, _ = score_server(refuse)
    with pytest.raises(RewardError, match=re.escape("http://rm.test/score: connection refused")):
        HttpReward("http://rm.test", transport=transport).score("q", "a")


# -- training --------------------------------------------------------------------------


def test_head_learns_a_keyword_preference_and_ranks_unseen_prompts() -> None:
    pairs = keyword_pairs()
    head, report = train_reward(pairs, HashingEmbedder(), seed=3)
    assert report.heldout_accuracy is not None and report.heldout_accuracy > 0.9
    assert report.heldout_by_source == {"synthetic": report.heldout_accuracy}
    assert report.pairs == len(pairs) == report.train_pairs + report.heldout_pairs
    assert report.heldout_groups == 12  # 20% of 60 prompts
    unseen = "Something never asked before?"
    assert head.score(unseen, f"{KEYWORD} the road and the river") > head.score(
        unseen, "the road and the river"
    )


def test_no_prompt_is_both_trained_on_and_held_out() -> None:
    pairs = [
        *keyword_pairs(prompts=30),
        # The same prompts written differently, and a group joining two prompts.
        PreferencePair("  QUESTION 0: tell me about the sea ", "a", "b"),
        PreferencePair("Linked one", "a", "b", group="g"),
        PreferencePair("Linked two", "a", "b", group="g"),
        PreferencePair("Question 1: tell me about the sea", "a", "b", group="g"),
    ]
    for seed in range(20):
        train, heldout, _ = split_pairs(pairs, 0.3, seed)
        assert len(train) + len(heldout) == len(pairs) and heldout and train
        folded = {" ".join(p.prompt.split()).casefold() for p in train}
        assert not folded & {" ".join(p.prompt.split()).casefold() for p in heldout}
        assert len({p.group for p in train} & {p.group for p in heldout} - {None}) == 0


def test_split_holds_out_one_group_of_two_and_none_of_one() -> None:
    two = [PreferencePair("p1", "a", "b"), PreferencePair("p2", "a", "b")]
    assert [len(part) for part in split_pairs(two, 0.01, 0)[:2]] == [1, 1]
    assert [len(part) for part in split_pairs(two[:1], 0.5, 0)[:2]] == [1, 0]
    _, report = train_reward(two[:1], HashingEmbedder(), heldout_share=0.5)
    assert report.heldout_accuracy is None and report.heldout_pairs == 0


def test_training_refuses_no_pairs() -> None:
    with pytest.raises(ValueError, match="no preference pairs"):
        train_reward([], HashingEmbedder())


# -- artifact --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> EmbeddingReward:
    return train_reward(keyword_pairs(), HashingEmbedder(), seed=0)[0]


SAMPLES = [
    ("Tell me about the moon.", "gladly: the moon is a stone"),
    ("Tell me about the moon.", "the moon is a stone"),
    ("Hello!", "hello there, gladly"),
]


def test_a_saved_head_loads_and_scores_identically(
    trained: EmbeddingReward, tmp_path: Path
) -> None:
    trained.save(tmp_path / "head")
    loaded = EmbeddingReward.load(tmp_path / "head", HashingEmbedder())
    assert [loaded.score(p, a) for p, a in SAMPLES] == [trained.score(p, a) for p, a in SAMPLES]
    assert loaded.version == trained.version and loaded.name == f"builtin:{trained.version}"
    assert loaded.report == trained.report
    info = json.loads((tmp_path / "head" / "reward.json").read_text())
    assert info["embedder"] == "hashing-bow-v1" and info["features"] == FEATURES
    assert info["data_sha256"] == trained.report.data_sha256
    assert info["heldout_accuracy"] == trained.report.heldout_accuracy
    assert {"version", "created_at", "pairs", "train_seconds"} <= set(info)


def test_a_head_trained_on_another_embedder_is_refused(
    trained: EmbeddingReward, tmp_path: Path
) -> None:
    trained.save(tmp_path / "head")
    with pytest.raises(ArtifactError, match="trained on embedder hashing-bow-v1, but embedder"):
        EmbeddingReward.load(tmp_path / "head", HashingEmbedder("hashing-bow-v2"))


def test_weights_that_are_not_the_ones_described_are_refused(
    trained: EmbeddingReward, tmp_path: Path
) -> None:
    other = train_reward(keyword_pairs(seed=9), HashingEmbedder())[0]
    trained.save(tmp_path / "one")
    other.save(tmp_path / "two")
    (tmp_path / "two" / "reward.npz").replace(tmp_path / "one" / "reward.npz")
    with pytest.raises(ArtifactError, match="is not the file"):
        EmbeddingReward.load(tmp_path / "one", HashingEmbedder())
    with pytest.raises(ArtifactError, match="no readable reward head"):
        EmbeddingReward.load(tmp_path / "two", HashingEmbedder())
    weights = tmp_path / "one" / "reward.npz"
    weights.write_bytes(weights.read_bytes()[:300])  # cut short
    with pytest.raises(ArtifactError, match="no readable reward head"):
        EmbeddingReward.load(tmp_path / "one", HashingEmbedder())


def test_an_interrupted_save_leaves_the_old_head_or_none(
    trained: EmbeddingReward, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: EmbeddingReward) -> dict[str, Any]:
        # After the weights are written, before the description is.
        assert any(tmp_path.glob(".head-new-*/reward.npz"))
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(EmbeddingReward, "info", interrupted)
        with pytest.raises(KeyboardInterrupt):
            trained.save(tmp_path / "head")
    assert list(tmp_path.iterdir()) == []

    trained.save(tmp_path / "head")
    newer = train_reward(keyword_pairs(seed=9), HashingEmbedder())[0]
    with monkeypatch.context() as patch:
        patch.setattr(EmbeddingReward, "info", interrupted)
        with pytest.raises(KeyboardInterrupt):
            newer.save(tmp_path / "head")
    assert [p.name for p in tmp_path.iterdir()] == ["head"]
    assert EmbeddingReward.load(tmp_path / "head", HashingEmbedder()).version == trained.version


def test_a_failed_swap_puts_the_old_head_back(
    trained: EmbeddingReward, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained.save(tmp_path / "head")
    newer = train_reward(keyword_pairs(seed=9), HashingEmbedder())[0]

    def no_rename(self: Path, target: Path) -> Path:
        raise OSError("disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", no_rename)
        with pytest.raises(OSError, match="disk went away"):
            newer.save(tmp_path / "head")
    assert [p.name for p in tmp_path.iterdir()] == ["head"]
    assert EmbeddingReward.load(tmp_path / "head", HashingEmbedder()).version == trained.version
    newer.save(tmp_path / "head")
    assert EmbeddingReward.load(tmp_path / "head", HashingEmbedder()).version == newer.version


# -- pair sources ----------------------------------------------------------------------


def test_read_pairs_reads_jsonl_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"prompt": "q", "chosen": "c", "rejected": "r", "group": 7, "source": "feedback"},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert read_pairs(path) == [
        PreferencePair("p", "c", "r"),
        PreferencePair("q", "c", "r", "7", "feedback"),
    ]
    path.write_text(json.dumps(rows[0]) + '\n{"prompt": "p", "chosen": "c"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: "):
        read_pairs(path)


def styled_answers() -> dict[str, dict[str, str]]:
    directory = demo_data_dir()
    answers = {}
    for route in demo_routes(directory):
        rows = [json.loads(line) for line in (directory / f"{route}.jsonl").open()]
        answers[route] = {row["prompt"]: row["response"] for row in rows}
    return answers


def test_demo_pairs_prefer_the_routes_style_and_its_answer_to_the_question() -> None:
    answers = styled_answers()
    assert sorted(answers) == ["cowboy", "french", "pirate", "shout"]
    pairs = demo_pairs(demo_data_dir(), "pirate", seed=0)
    prompts = set(answers["pirate"])
    for pair in pairs:
        assert pair.chosen == answers["pirate"][pair.prompt]
        if pair.source == "other_style":
            assert pair.rejected in {answers[s][pair.prompt] for s in answers if s != "pirate"}
        else:
            assert pair.source == "other_prompt"
            assert pair.rejected in set(answers["pirate"].values()) - {pair.chosen}
    # Every prompt: three other styles and the three (or four) other prompts of its group.
    assert len({p.prompt for p in pairs}) == len(prompts) == 65
    assert sum(p.source == "other_style" for p in pairs) == 3 * 65
    groups = {p.group for p in pairs}
    assert len(groups) == 16 and len(pairs) == 3 * 65 + 3 * 60 + 4 * 5


def test_demo_held_out_pairs_share_no_text_with_training() -> None:
    pairs = demo_pairs(demo_data_dir(), "french", seed=4)
    train, heldout, groups = split_pairs(pairs, 0.2, seed=4)
    assert groups == 3
    seen = {t for p in train for t in (p.prompt, p.chosen, p.rejected)}
    assert not seen & {t for p in heldout for t in (p.prompt, p.chosen, p.rejected)}


def test_demo_pairs_refuse_an_unknown_route() -> None:
    with pytest.raises(ValueError, match="no demo dataset for route 'viking'"):
        demo_pairs(demo_data_dir(), "viking")


# -- the real embedder -----------------------------------------------------------------


def test_demo_heads_rank_held_out_prompts_with_the_routers_embedder(tmp_path: Path) -> None:
    from gateway.routing.embedder import load_embedder

    # The model comes from the packages (scripts/setup.sh builds its fused export): a
    # missing one is a failure here, not a reason to skip.
    embedder = reward_cli._Remembering(load_embedder(DEFAULT_CACHE_DIR))
    for route in demo_routes(demo_data_dir()):
        head, report = train_reward(demo_pairs(demo_data_dir(), route), embedder)
        assert report.heldout_accuracy is not None and report.heldout_accuracy >= 0.8, route
        # 1.0 on every seed measured; int8 embeddings differ a little from CPU to CPU.
        assert report.heldout_by_source["other_style"] >= 0.95, route
        head.save(tmp_path / route)
        again = EmbeddingReward.load(tmp_path / route, embedder.inner)
        prompt, answer = "Tell me about snow.", "Snow is frozen water falling from clouds."
        assert again.score(prompt, answer) == pytest.approx(head.score(prompt, answer), abs=1e-5)


# -- the command -----------------------------------------------------------------------


def test_reward_command_trains_a_head_and_scores_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    monkeypatch.setattr(reward_cli, "_embedder", HashingEmbedder)
    app = typer.Typer()
    app.add_typer(reward_cli.reward_app, name="reward")
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in keyword_pairs()
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    runner = CliRunner()

    result = runner.invoke(app, ["reward", "train", str(pairs), "--out", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    result = runner.invoke(
        app, ["reward", "train", str(pairs), "--out", str(tmp_path / "h"), "--json"]
    )
    (info,) = json.loads(result.stdout)
    assert info["heldout_accuracy"] > 0.9 and info["pairs"] == len(rows)

    args = ["reward", "score", str(tmp_path / "h"), "--prompt", "Hi?", "--json"]
    good = json.loads(runner.invoke(app, [*args, "--answer", f"{KEYWORD} yes"]).stdout)
    bad = json.loads(runner.invoke(app, [*args, "--answer", "yes"]).stdout)
    assert good["score"] > bad["score"] and good["head"] == f"builtin:{info['version']}"

    result = runner.invoke(
        app, ["reward", "score", str(tmp_path / "none"), "--prompt", "p", "--answer", "a"]
    )
    assert result.exit_code == 1 and "no readable reward head" in result.output
