"""Greedy answers whose choices are clear: the only ones integration tests assert content on.

SmolLM2's logits come out of a bf16 lm_head, so the gap between the top two logprobs of a
step moves in steps of 1/32 to 1/8 nat, and CPU kinds round differently (AMX tiles, AVX-512
and AVX2 accumulate in other orders). "What is the capital of France?" opens with 'The'
ahead of 'L' by 0.25 nat on an AVX-512 EPYC and in an exact tie on an AMX Xeon, where the
greedy answer becomes "L'Étoile, la Marseillaise, ...". A step counts as decided when its
top-2 gap is at least MARGIN_NATS = 0.5: twice the shift measured between those CPUs, four
to sixteen bf16 steps. The same engine gave the same gaps to a prompt alone and in a batch
of 35 (the int8 products are exact).

A different program moves gaps more: the compiled and the eager forms of the model moved
first-token gaps by up to 1 nat on one CPU. So no test carries a choice of prompts from one
engine to another: each asks the engine under test for `logprobs` (chat: `logprobs: true,
top_logprobs: 2`), keeps the candidates whose steps are decided where its assertion looks,
and requires enough of them to qualify that it still proves its claim (too few fails the
test, never skips it). The candidate lists leave room: about half qualify on the EPYC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MARGIN_NATS = 0.5
# Top logprobs to ask for: two are enough to measure the gap.
TOP_LOGPROBS = 2


@dataclass(frozen=True)
class Greedy:
    """One greedy answer with the top-2 logprob gap of each generated token."""

    prompt: str
    text: str
    tokens: tuple[str, ...]
    gaps: tuple[float, ...]

    @classmethod
    def from_chat(cls, prompt: str, choice: Mapping[str, Any]) -> Greedy:
        """Read a chat choice requested with `logprobs: true, top_logprobs: 2`."""
        content = choice["logprobs"]["content"]
        tokens = tuple(step["token"] for step in content)
        gaps = tuple(_gap([top["logprob"] for top in step["top_logprobs"]]) for step in content)
        return cls(prompt, choice["message"]["content"] or "", tokens, gaps)

    def opening_gap(self, count: int) -> float:
        """The smallest gap among the first `count` tokens (0 if the answer is shorter)."""
        return min(self.gaps[:count]) if len(self.gaps) >= count else 0.0

    def decided_for(self, count: int) -> bool:
        """Whether the first `count` tokens were each chosen by at least MARGIN_NATS."""
        return self.opening_gap(count) >= MARGIN_NATS

    def tokens_through(self, word: str) -> int | None:
        """How many tokens it takes to have written `word` in full; None if it never does."""
        start = "".join(self.tokens).find(word)
        if start < 0:
            return None
        end, written = start + len(word), 0
        for index, token in enumerate(self.tokens):
            written += len(token)
            if written >= end:
                return index + 1
        return None

    def margins(self, count: int = 8) -> str:
        """The first tokens with their gaps, for assertion messages and logs."""
        return " ".join(
            f"{t!r}:{g:.3f}" for t, g in zip(self.tokens, self.gaps[:count], strict=False)
        )


def _gap(logprobs: Sequence[float]) -> float:
    """Top-1 minus top-2 to 1/1000 nat; a step with one candidate is as decided as it gets."""
    ranked = sorted(logprobs, reverse=True)
    # Rounded: a gap of exactly 0.5 must not come out as 0.4999996 after float32 log-softmax.
    return round(ranked[0] - ranked[1], 3) if len(ranked) > 1 else float("inf")


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """A greedy chat request that reports the top-2 logprobs of every token."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
    }
