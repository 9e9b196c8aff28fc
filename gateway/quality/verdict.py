"""What every verifier shares: the verdict it gives, the built verifier, the spec it is built
from, and the limits on what it reads (`gateway.quality.verifiers` holds the kinds)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

MAX_ANSWER_CHARS: Final = 32_768
# Details are stored beside every score: keep them short.
DETAIL_CHARS: Final = 200
MAX_SCHEMA_CHARS: Final = 65_536
SCORER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One scorer's judgement of one answer (`passed` None: a value with no verdict, as a
    reward model's score)."""

    passed: bool | None
    value: float
    detail: str


# (the answer's first MAX_ANSWER_CHARS characters, the whole answer's length) -> Verdict
Check = Callable[[str, int], Verdict]


@dataclass(frozen=True, slots=True)
class Verifier:
    """A built verifier: call it with an answer (and its prompt) for a `Verdict`."""

    name: str
    kind: str
    check: Check

    def __call__(self, answer: str, prompt: str = "") -> Verdict:
        """Judge the first `MAX_ANSWER_CHARS` characters of `answer`."""
        # The prompt is part of the contract for kinds that compare it with the answer;
        # none of the current ones does.
        del prompt
        return self.check(answer[:MAX_ANSWER_CHARS], len(answer))


def verdict(passed: bool, detail: str, value: float | None = None) -> Verdict:
    """A verifier's verdict: `value` 1.0 or 0.0 by `passed` unless given; `detail` cut short."""
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 1] + "…"
    return Verdict(passed, (1.0 if passed else 0.0) if value is None else value, detail)


def cut(length: int) -> str:
    """What a detail adds when the answer was longer than what was read."""
    if length <= MAX_ANSWER_CHARS:
        return ""
    return f" (read the first {MAX_ANSWER_CHARS} of {length} characters)"


class SpecBase(BaseModel):
    """What every scorer's spec has: a kind, a name and a sample rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    # Unique within a route; defaults to the kind.
    name: str | None = Field(default=None, pattern=SCORER_NAME.pattern)
    # Share of the route's answered requests scored; None: the route's (else the config's).
    sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def scorer_name(self) -> str:
        """The name scores are stored under."""
        return self.name or self.kind


class VerifierSpecBase(SpecBase):
    """A spec whose scorer is a verifier, built here."""

    def build(self) -> Verifier:
        """Compile the spec into a verifier (do it once, call it per answer)."""
        return Verifier(self.scorer_name, self.kind, self._check())

    def _check(self) -> Check:
        raise NotImplementedError
