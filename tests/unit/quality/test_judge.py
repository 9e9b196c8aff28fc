"""The LLM judge: rubrics, reading replies, both orders of a pair, failures as results."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.errors import InvalidScorerConfig
from gateway.quality.config import JudgeSpec, parse_scorer_config
from gateway.quality.judge import (
    CUT_MARK,
    JUDGE_HEADER,
    MAX_ANSWER_CHARS,
    MAX_QUESTION_CHARS,
    Judge,
    Limits,
    RubricError,
    judge_for,
    known_rubrics,
    load_rubric,
    parse_preference,
    parse_score,
)

BASE = "http://judge.test/v1"
QUESTION = "How do I boil an egg?"
GOOD = "Put the egg in boiling water for about nine minutes, then cool it in cold water."
BAD = "Put the egg in"

PLACEHOLDER = re.compile(r"\{(question|answer|answer_a|answer_b)\}")

Reply = Callable[[dict[str, Any]], httpx.Response]


def completion(text: str | None) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    )


def user_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def answer_shown_as_a(body: dict[str, Any]) -> str:
    text = user_text(body)
    return text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]


class Recorder:
    """A MockTransport handler that keeps every request and answers with `reply`."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        return self.reply(body)


def judge_with(reply: Reply, **kwargs: Any) -> tuple[Judge, Recorder]:
    recorder = Recorder(reply)
    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    judge = Judge(
        client, load_rubric("helpfulness", 1), base_url=BASE, model="judge-model", **kwargs
    )
    return judge, recorder


def by_order(when_candidate_is_a: str, when_candidate_is_b: str) -> Reply:
    """Replies depending on which answer is shown first (the candidate is GOOD here)."""

    def reply(body: dict[str, Any]) -> httpx.Response:
        first = answer_shown_as_a(body)
        return completion(when_candidate_is_a if first == GOOD else when_candidate_is_b)

    return reply


# --- rubrics -----------------------------------------------------------------------------


def test_every_packaged_rubric_renders_both_modes() -> None:
    rubrics = known_rubrics()
    assert "helpfulness" in rubrics
    for name, versions in rubrics.items():
        for version in versions:
            rubric = load_rubric(name, version)
            point = rubric.render_pointwise("the question", "the answer")
            pair = rubric.render_pairwise("the question", "answer one", "answer two")
            assert [m["role"] for m in point] == ["system", "user"]
            assert "the question" in point[1]["content"] and "the answer" in point[1]["content"]
            assert "Score:" in point[1]["content"]
            text = pair[1]["content"]
            assert text.index("answer one") < text.index("answer two")
            assert "Better:" in text
            for message in (*point, *pair):
                assert not PLACEHOLDER.search(message["content"])


def test_unknown_rubric_names_the_known_ones() -> None:
    with pytest.raises(RubricError, match=r"unknown rubric 'nope' \(known rubrics: .*helpfulness"):
        load_rubric("nope", 1)


def test_unknown_version_names_the_known_ones() -> None:
    with pytest.raises(RubricError, match=r"no version 99 \(versions: 1"):
        load_rubric("helpfulness", 99)


def test_a_rubric_name_is_not_a_path() -> None:
    with pytest.raises(RubricError, match="unknown rubric"):
        load_rubric("../config", 1)


def test_an_answer_holding_a_placeholder_is_not_filled_in_again() -> None:
    rubric = load_rubric("helpfulness", 1)
    text = rubric.render_pairwise("{answer_b}", "{question} {answer_b}", "second")[1]["content"]
    assert "{question} {answer_b}" in text
    assert text.count("second") == 1


def test_prompts_are_bounded_and_say_where_they_were_cut() -> None:
    rubric = load_rubric("helpfulness", 1)
    short = rubric.render_pairwise("q", "a", "b")[1]["content"]
    huge = "word " * 50_000
    text = rubric.render_pairwise(huge, huge, huge)[1]["content"]
    assert len(text) <= len(short) + MAX_QUESTION_CHARS + 2 * MAX_ANSWER_CHARS
    assert text.count(CUT_MARK) == 3
    single = rubric.render_pointwise(huge, huge)[1]["content"]
    assert len(single) <= len(short) + MAX_QUESTION_CHARS + MAX_ANSWER_CHARS


def test_limits_can_be_raised_for_a_judge_with_a_larger_context() -> None:
    rubric = load_rubric("helpfulness", 1)
    long = "x" * 2000
    text = rubric.render_pointwise("q", long, limits=Limits(answer_chars=3000))[1]["content"]
    assert long in text and CUT_MARK not in text


# --- reading replies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Score: 7", 7),
        ("score:7", 7),
        ("Score: 10", 10),
        ("Score: 1", 1),
        ("Score: 7/10", 7),
        ("Score: 8 / 10.", 8),
        ("Score: 6 out of 10", 6),
        ("**Score:** 7", 7),
        ("Score: **9**", 9),
        ("The answer is on topic and complete.\nScore: 8", 8),
        ("Final score: 4", 4),
        ("Score: 3\nOn reflection it misses the point.\nScore: 2", 2),
    ],
)
def test_score_is_read_off_the_last_score_line(text: str, score: int) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "I would give it a 7.",
        "The score is 7.",
        "Score: 0",
        "Score: 11",
        "Score: 100",
        "Score: 7.5",
        "Score: 7 or 8",
        "Score: seven",
        "Score: 8/100",
        "Score:",
        # The last score line decides: an unreadable one is not replaced by an earlier one.
        "Score: 7\nScore: N",
    ],
)
def test_an_unreadable_score_is_none(text: str) -> None:
    assert parse_score(text) is None


@pytest.mark.parametrize(
    ("text", "preference"),
    [
        ("Better: A", "A"),
        ("Better: B", "B"),
        ("Better: tie", "tie"),
        ("Better: Tie.", "tie"),
        ("better: b", "B"),
        ("**Better:** A", "A"),
        ("Better: Answer B", "B"),
        ("Better: (A)", "A"),
        ("Answer A is off topic.\nBetter: B", "B"),
        ("Better: A\nWait, no.\nBetter: B", "B"),
    ],
)
def test_preference_is_read_off_the_last_better_line(text: str, preference: str) -> None:
    assert parse_preference(text) == preference


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A",
        "Answer A is better.",
        "Better: A or B",
        "Better: both",
        "Better: C",
        "Better:",
        "Better: A\nBetter: neither",
    ],
)
def test_an_unreadable_preference_is_none(text: str) -> None:
    assert parse_preference(text) is None


# --- pointwise ---------------------------------------------------------------------------


async def test_pointwise_sends_the_rubric_to_the_model_greedily_with_the_judge_header() -> None:
    judge, recorder = judge_with(lambda body: completion("Score: 8"), api_key="k-123")
    result = await judge.pointwise(QUESTION, GOOD)
    assert (result.score, result.raw, result.error) == (8, "Score: 8", None)
    [request] = recorder.requests
    assert str(request.url) == f"{BASE}/chat/completions"
    assert request.headers[JUDGE_HEADER] == "1"
    assert request.headers["authorization"] == "Bearer k-123"
    body = recorder.bodies[0]
    assert body["model"] == "judge-model"
    assert body["temperature"] == 0
    assert 0 < body["max_tokens"] <= 64
    assert QUESTION in user_text(body) and GOOD in user_text(body)


async def test_pointwise_unreadable_reply_is_no_score_and_no_error() -> None:
    judge, _ = judge_with(lambda body: completion("It is a fine answer, I think."))
    result = await judge.pointwise(QUESTION, GOOD)
    assert (result.score, result.error) == (None, None)
    assert result.raw == "It is a fine answer, I think."


async def test_pointwise_null_content_is_no_score() -> None:
    judge, _ = judge_with(lambda body: completion(None))
    result = await judge.pointwise(QUESTION, GOOD)
    assert (result.score, result.raw, result.error) == (None, "", None)


async def test_pointwise_http_error_is_an_error_result() -> None:
    judge, _ = judge_with(lambda body: httpx.Response(500, text="engine exploded"))
    result = await judge.pointwise(QUESTION, GOOD)
    assert result.score is None
    assert result.error is not None and result.error.startswith("HTTP 500")


async def test_pointwise_reply_that_is_no_completion_is_an_error_result() -> None:
    judge, _ = judge_with(lambda body: httpx.Response(200, json={"oops": True}))
    result = await judge.pointwise(QUESTION, GOOD)
    assert result.score is None
    assert result.error is not None and result.error.startswith("not a chat completion")


async def test_pointwise_connection_failure_is_an_error_result() -> None:
    def refuse(body: dict[str, Any]) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    judge, _ = judge_with(refuse)
    result = await judge.pointwise(QUESTION, GOOD)
    assert result.score is None
    assert result.error == "ConnectError: connection refused"


async def test_pointwise_slow_judge_times_out_as_an_error_result() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return completion("Score: 9")

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    judge = Judge(client, load_rubric("helpfulness", 1), base_url=BASE, model="m", timeout_s=0.05)
    result = await judge.pointwise(QUESTION, GOOD)
    assert result.score is None
    assert result.error == "timed out after 0.05s"


# --- pairwise ----------------------------------------------------------------------------


async def test_pairwise_asks_both_orders_with_the_judge_header() -> None:
    judge, recorder = judge_with(by_order("Better: A", "Better: B"))
    await judge.pairwise(QUESTION, answer_stable=BAD, answer_candidate=GOOD)
    assert sorted(answer_shown_as_a(body) for body in recorder.bodies) == sorted([GOOD, BAD])
    assert all(r.headers[JUDGE_HEADER] == "1" for r in recorder.requests)


async def test_pairwise_asks_both_orders_at_once() -> None:
    in_flight = 0
    most = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return completion("Better: tie")

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    judge = Judge(client, load_rubric("helpfulness", 1), base_url=BASE, model="m")
    await judge.pairwise(QUESTION, BAD, GOOD)
    assert most == 2


async def test_pairwise_orders_that_agree_on_the_candidate_give_its_verdict() -> None:
    # The candidate (GOOD) is A in one order and B in the other: both replies prefer it.
    judge, _ = judge_with(by_order("Better: A", "Better: B"))
    result = await judge.pairwise(QUESTION, answer_stable=BAD, answer_candidate=GOOD)
    assert (result.verdict, result.agreed, result.parsed) == ("candidate", True, 2)
    assert (result.candidate_as_a.pick, result.candidate_as_b.pick) == ("candidate", "candidate")
    assert (result.candidate_as_a.raw, result.candidate_as_b.raw) == ("Better: A", "Better: B")
    assert result.error is None


async def test_pairwise_orders_that_agree_on_the_stable_answer_give_its_verdict() -> None:
    judge, _ = judge_with(by_order("Better: B", "Better: A"))
    result = await judge.pairwise(QUESTION, answer_stable=BAD, answer_candidate=GOOD)
    assert (result.verdict, result.agreed, result.parsed) == ("stable", True, 2)


async def test_pairwise_ties_in_both_orders_are_a_tie() -> None:
    judge, _ = judge_with(lambda body: completion("Better: tie"))
    result = await judge.pairwise(QUESTION, BAD, GOOD)
    assert (result.verdict, result.agreed, result.parsed) == ("tie", True, 2)


async def test_pairwise_a_judge_that_always_picks_a_gets_no_verdict() -> None:
    # Position bias: "A" in both orders means candidate once and stable once.
    judge, _ = judge_with(lambda body: completion("Better: A"))
    result = await judge.pairwise(QUESTION, answer_stable=BAD, answer_candidate=GOOD)
    assert (result.verdict, result.agreed, result.parsed) == (None, False, 2)
    assert (result.candidate_as_a.pick, result.candidate_as_b.pick) == ("candidate", "stable")
    assert result.error is None


async def test_pairwise_one_order_unreadable_gets_no_verdict() -> None:
    judge, _ = judge_with(by_order("Better: A", "I like the first one."))
    result = await judge.pairwise(QUESTION, answer_stable=BAD, answer_candidate=GOOD)
    assert (result.verdict, result.agreed, result.parsed) == (None, False, 1)
    assert (result.candidate_as_a.pick, result.candidate_as_b.pick) == ("candidate", None)
    assert result.candidate_as_b.raw == "I like the first one."
    assert result.error is None


async def test_pairwise_one_order_failing_is_an_error_and_no_verdict() -> None:
    def reply(body: dict[str, Any]) -> httpx.Response:
        if answer_shown_as_a(body) == GOOD:
            return completion("Better: A")
        return httpx.Response(500, text="engine exploded")

    judge, _ = judge_with(reply)
    result = await judge.pairwise(QUESTION, answer_stable=BAD, answer_candidate=GOOD)
    assert (result.verdict, result.agreed, result.parsed) == (None, False, 1)
    assert result.error is not None and result.error.startswith("candidate as B: HTTP 500")


async def test_pairwise_timeout_is_an_error_and_no_verdict() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return completion("Better: A")

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    judge = Judge(client, load_rubric("helpfulness", 1), base_url=BASE, model="m", timeout_s=0.05)
    result = await judge.pairwise(QUESTION, BAD, GOOD)
    assert (result.verdict, result.agreed, result.parsed) == (None, False, 0)
    assert result.error == (
        "candidate as A: timed out after 0.05s; candidate as B: timed out after 0.05s"
    )


async def test_pairwise_prompts_are_bounded() -> None:
    judge, recorder = judge_with(lambda body: completion("Better: tie"))
    huge = "blah " * 20_000
    await judge.pairwise(huge, huge, huge)
    for body in recorder.bodies:
        size = sum(len(m["content"]) for m in body["messages"])
        assert size < MAX_QUESTION_CHARS + 2 * MAX_ANSWER_CHARS + 1000


# --- from a scorer spec ------------------------------------------------------------------


def test_judge_for_a_spec_defaults_to_the_gateway_and_its_base_model() -> None:
    client = httpx.AsyncClient()
    spec = JudgeSpec(rubric="helpfulness")
    judge = judge_for(spec, client, gateway_url="http://gw:8000/v1", base_model="base")
    assert (judge.model, judge.rubric.name, judge.rubric.version) == ("base", "helpfulness", 1)


async def test_judge_for_a_spec_uses_its_endpoint_and_model() -> None:
    recorder = Recorder(lambda body: completion("Score: 5"))
    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    spec = JudgeSpec(rubric="helpfulness", endpoint="http://big.test/v1", model="qwen-7b")
    judge = judge_for(spec, client, gateway_url="http://gw:8000/v1", base_model="base")
    assert (await judge.pointwise(QUESTION, GOOD)).score == 5
    assert str(recorder.requests[0].url) == "http://big.test/v1/chat/completions"
    assert recorder.bodies[0]["model"] == "qwen-7b"


def test_an_unknown_rubric_is_refused_by_the_configuration() -> None:
    with pytest.raises(InvalidScorerConfig, match="unknown rubric 'nope'"):
        parse_scorer_config("routes: {r: {scorers: [{kind: judge, rubric: nope}]}}")
    with pytest.raises(InvalidScorerConfig, match="has no version 9"):
        parse_scorer_config(
            "routes: {r: {scorers: [{kind: judge, rubric: helpfulness, rubric_version: 9}]}}"
        )
