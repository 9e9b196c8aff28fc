"""The LLM judge: grades answers by a versioned rubric through an OpenAI-compatible endpoint.

Two modes (a `JudgeSpec`'s `mode`):
- pointwise: one answer gets a score from 1 to 10, read off the reply's last `Score: N` line;
- pairwise: a shadow pair gets a verdict, which answer is better. Both orders are asked at
  once (the candidate as answer A, then as answer B) and a verdict is given only when the
  two agree: judges favour a position, and even strong ones agree with themselves across
  orders only about 65% of the time.

A reply the parsers cannot read gives no score (or no verdict): the caller counts it, and
nothing is ever guessed. An HTTP error or a timeout is a result with `error` set; the judge
never raises into the worker that calls it (cancellation still propagates).

Every request carries the header `JUDGE_HEADER: 1`. By default the judge is the gateway's
own base model, asked through the gateway: the header is how the gateway knows not to log,
score or count the judge's requests as user traffic.

Rubrics are YAML files packaged in `gateway/quality/rubrics/` (`<name>.yaml`, one per
rubric, every version in it). The question and each answer are cut to a bounded number of
characters before rendering (by default `MAX_QUESTION_CHARS` and `MAX_ANSWER_CHARS`; a cut
text ends in `CUT_MARK`), so that a pairwise prompt and its reply fit the default judge's
1024-token context (SmolLM2-135M-Instruct): a long answer is judged by its start.
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.quality.verdict import SCORER_NAME

if TYPE_CHECKING:
    from gateway.quality.config import JudgeSpec

JUDGE_HEADER: Final = "x-lora-gateway-judge"
# Sized for prose: a pairwise prompt of English, French or German text, or of JSON mostly
# of words, at these bounds is 500-850 tokens of SmolLM2's tokenizer, leaving room for the
# reply in 1024. Denser text (long digit strings, number-heavy JSON, CJK, emoji: 1-2
# characters a token) can overflow it; the engine then refuses the request and the result
# is an error, counted like any other. A judge with a larger context may raise both bounds.
MAX_QUESTION_CHARS: Final = 400
MAX_ANSWER_CHARS: Final = 700
CUT_MARK: Final = " [...]"
# Enough for the one line asked for, and a short preamble a chattier judge may write.
MAX_TOKENS: Final = 48
DEFAULT_TIMEOUT_S: Final = 60.0
# Errors are stored beside results: keep them short.
ERROR_CHARS: Final = 200

Mode = Literal["pointwise", "pairwise"]
Preference = Literal["A", "B", "tie"]
PairVerdict = Literal["candidate", "stable", "tie"]
Messages = list[dict[str, str]]

_PLACEHOLDER = re.compile(r"\{(question|answer|answer_a|answer_b)\}")
_NEEDS: Final[dict[Mode, frozenset[str]]] = {
    "pointwise": frozenset({"question", "answer"}),
    "pairwise": frozenset({"question", "answer_a", "answer_b"}),
}
# Markdown a reply may wrap its last line in: `**Score:** 7`, `> Better: A`, `Score: *7*`.
_DECOR = r"[\s*_`>#-]*"
_SCORE_LINE = re.compile(rf"^{_DECOR}(?:final\s+|overall\s+)?score\b(.*)$", re.I)
_SCORE_VALUE = re.compile(
    r"^[\s*_`]*[:=][\s*_`]*(\d{1,2})[\s*_`]*(?:(?:/|out\s+of)\s*10)?[\s*_`.!]*$", re.I
)
_BETTER_LINE = re.compile(rf"^{_DECOR}better\b(.*)$", re.I)
_BETTER_VALUE = re.compile(
    r"^[\s*_`]*:[\s*_`]*(?:answer\s+)?[(\[]?(a|b|tie)[)\]]?[\s*_`.!]*$", re.I
)


class RubricError(ValueError):
    """An unknown rubric or version (the message lists the known ones), or a broken file."""


class Prompt(BaseModel):
    """One mode's chat prompt: the system message and the user message's template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str = Field(min_length=1)
    user: str = Field(min_length=1)


class _Version(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pointwise: Prompt
    pairwise: Prompt


class _RubricFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SCORER_NAME.pattern)
    versions: dict[Annotated[int, Field(ge=1)], _Version] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Limits:
    """How many characters of the question and of each answer a prompt holds."""

    question_chars: int = MAX_QUESTION_CHARS
    answer_chars: int = MAX_ANSWER_CHARS

    def __post_init__(self) -> None:
        if min(self.question_chars, self.answer_chars) <= len(CUT_MARK):
            raise ValueError(f"limits must exceed {len(CUT_MARK)} characters: {self}")


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)].rstrip() + CUT_MARK


def _render(prompt: Prompt, limits: Limits, **texts: str) -> Messages:
    values = {
        key: _cut(text, limits.question_chars if key == "question" else limits.answer_chars)
        for key, text in texts.items()
    }
    # One pass: an answer that holds `{answer_b}` is not filled in again.
    user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], prompt.user)
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]


@dataclass(frozen=True, slots=True)
class Rubric:
    """One version of a rubric: the chat prompts of both modes."""

    name: str
    version: int
    pointwise: Prompt
    pairwise: Prompt

    def render_pointwise(
        self, question: str, answer: str, *, limits: Limits | None = None
    ) -> Messages:
        """The chat messages asking for a score of `answer` (texts cut to `limits`)."""
        return _render(self.pointwise, limits or Limits(), question=question, answer=answer)

    def render_pairwise(
        self, question: str, answer_a: str, answer_b: str, *, limits: Limits | None = None
    ) -> Messages:
        """The chat messages asking which of two answers is better (texts cut to `limits`)."""
        return _render(
            self.pairwise,
            limits or Limits(),
            question=question,
            answer_a=answer_a,
            answer_b=answer_b,
        )


def _check(file: _RubricFile, source: str) -> None:
    for version, entry in file.versions.items():
        for mode, needs in _NEEDS.items():
            template: Prompt = getattr(entry, mode)
            found = set(_PLACEHOLDER.findall(template.user))
            if found != needs or _PLACEHOLDER.search(template.system):
                raise RubricError(
                    f"{source}: versions.{version}.{mode}.user must use exactly "
                    f"{', '.join(sorted(needs))} (and system none); it uses "
                    f"{', '.join(sorted(found)) or 'none'}"
                )


@functools.cache
def _catalog() -> dict[str, dict[int, Rubric]]:
    catalog: dict[str, dict[int, Rubric]] = {}
    folder = resources.files("gateway.quality").joinpath("rubrics")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        try:
            file = _RubricFile.model_validate(yaml.safe_load(entry.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            raise RubricError(f"rubrics/{entry.name}: {exc}") from exc
        if f"{file.name}.yaml" != entry.name:
            raise RubricError(f"rubrics/{entry.name}: name is {file.name!r}, not the file's")
        _check(file, f"rubrics/{entry.name}")
        catalog[file.name] = {
            v: Rubric(file.name, v, e.pointwise, e.pairwise) for v, e in file.versions.items()
        }
    return catalog


def known_rubrics() -> dict[str, tuple[int, ...]]:
    """Every packaged rubric's name and versions."""
    return {name: tuple(sorted(versions)) for name, versions in _catalog().items()}


def load_rubric(name: str, version: int) -> Rubric:
    """A packaged rubric's version; `RubricError` naming the known ones if there is none."""
    catalog = _catalog()
    if name not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        raise RubricError(f"unknown rubric {name!r} (known rubrics: {known})")
    if version not in catalog[name]:
        known = ", ".join(map(str, sorted(catalog[name])))
        raise RubricError(f"rubric {name!r} has no version {version} (versions: {known})")
    return catalog[name][version]


def parse_score(text: str) -> int | None:
    """The score 1-10 of the reply's last `Score: N` line (`7/10`, `**Score:** 7` too);
    None when there is no such line, or the last one is not a whole number from 1 to 10."""
    lines = [m for line in text.splitlines() if (m := _SCORE_LINE.match(line))]
    value = _SCORE_VALUE.match(lines[-1].group(1)) if lines else None
    score = int(value.group(1)) if value else 0
    return score if 1 <= score <= 10 else None


def parse_preference(text: str) -> Preference | None:
    """`A`, `B` or `tie` from the reply's last `Better: X` line; None when unreadable."""
    lines = [m for line in text.splitlines() if (m := _BETTER_LINE.match(line))]
    value = _BETTER_VALUE.match(lines[-1].group(1)) if lines else None
    if value is None:
        return None
    choice = value.group(1).lower()
    return "tie" if choice == "tie" else "A" if choice == "a" else "B"


@dataclass(frozen=True, slots=True)
class PointwiseResult:
    """One answer's grading: its score (None: unreadable or failed), the reply, the error."""

    score: int | None
    raw: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class OrderResult:
    """One order of a pair: its preference mapped back to the pair's sides (None: unreadable
    or failed), the reply and the error."""

    pick: PairVerdict | None
    raw: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PairwiseResult:
    """One shadow pair's grading, both orders asked: `candidate_as_a` is the order that
    showed the candidate as answer A, `candidate_as_b` the other.

    `verdict` is set only when both orders were read and agree (`agreed`); `parsed` counts
    the orders read (0-2).
    """

    verdict: PairVerdict | None
    agreed: bool
    parsed: int
    candidate_as_a: OrderResult
    candidate_as_b: OrderResult

    @property
    def error(self) -> str | None:
        """What went wrong in either order (None: both were answered)."""
        orders = (("A", self.candidate_as_a), ("B", self.candidate_as_b))
        errors = [f"candidate as {name}: {o.error}" for name, o in orders if o.error]
        return "; ".join(errors) if errors else None


def _side(preference: Preference | None, candidate_is_a: bool) -> PairVerdict | None:
    if preference is None or preference == "tie":
        return preference
    return "candidate" if (preference == "A") == candidate_is_a else "stable"


class Judge:
    """Asks one model, at one OpenAI-compatible endpoint, to grade by one rubric."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        rubric: Rubric,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = MAX_TOKENS,
        limits: Limits | None = None,
    ) -> None:
        self._client = client
        self.rubric = rubric
        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self._limits = limits or Limits()
        self._headers = {JUDGE_HEADER: "1"}
        if api_key is not None:
            self._headers["authorization"] = f"Bearer {api_key}"

    async def pointwise(self, question: str, answer: str) -> PointwiseResult:
        """Score `answer` to `question` from 1 to 10."""
        raw, error = await self._ask(
            self.rubric.render_pointwise(question, answer, limits=self._limits)
        )
        return PointwiseResult(None if error else parse_score(raw), raw, error)

    async def pairwise(
        self, question: str, answer_stable: str, answer_candidate: str
    ) -> PairwiseResult:
        """Which answer is better, asked in both orders at once; a verdict only if they agree."""
        render = functools.partial(self.rubric.render_pairwise, question, limits=self._limits)
        first, second = await asyncio.gather(
            self._order(render(answer_candidate, answer_stable), candidate_is_a=True),
            self._order(render(answer_stable, answer_candidate), candidate_is_a=False),
        )
        parsed = (first.pick is not None) + (second.pick is not None)
        agreed = parsed == 2 and first.pick == second.pick
        return PairwiseResult(first.pick if agreed else None, agreed, parsed, first, second)

    async def _order(self, messages: Messages, *, candidate_is_a: bool) -> OrderResult:
        raw, error = await self._ask(messages)
        pick = None if error else _side(parse_preference(raw), candidate_is_a)
        return OrderResult(pick, raw, error)

    async def _ask(self, messages: Messages) -> tuple[str, str | None]:
        """The reply's text and None, or "" and what went wrong (never raises)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self._max_tokens,
            "temperature": 0,
            "stream": False,
        }
        try:
            # httpx's timeout bounds each read; this bounds the whole answer.
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.post(
                    self._url, json=body, headers=self._headers, timeout=self._timeout_s
                )
        except (TimeoutError, httpx.TimeoutException):
            return "", f"timed out after {self._timeout_s:g}s"
        except httpx.HTTPError as exc:
            return "", f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        if response.status_code != 200:
            return "", f"HTTP {response.status_code}: {response.text}"[:ERROR_CHARS]
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            return "", f"not a chat completion: {response.text}"[:ERROR_CHARS]
        # A null content (a reply of tool calls only) is a reply with nothing to read.
        return (content if isinstance(content, str) else ""), None


def judge_for(
    spec: JudgeSpec,
    client: httpx.AsyncClient,
    *,
    gateway_url: str,
    base_model: str,
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Judge:
    """The judge a `JudgeSpec` configures: its endpoint, else the gateway's own OpenAI base
    URL (`gateway_url`, e.g. `http://127.0.0.1:8000/v1`); its model, else the base model."""
    return Judge(
        client,
        load_rubric(spec.rubric, spec.rubric_version),
        base_url=spec.endpoint or gateway_url,
        model=spec.model or base_model,
        api_key=api_key,
        timeout_s=timeout_s,
    )
