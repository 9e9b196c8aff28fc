"""From examples to the tensors of one training step.

A step's rows lie end to end on one line, with no padding: rows of 40 to 130 tokens padded
to their batch's longest would waste 13 to 25% of every step's work. Positions restart at
each row and attention stays within it (`adapters.row_attention`, or transformers' own
attention, which builds that block-diagonal causal mask from the restarts), so the step
computes what the padded one would, on fewer tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from adapters.train import Example

IGNORE = -100


class Encoded(NamedTuple):
    """One example's token ids and labels (IGNORE where no loss is taken)."""

    ids: list[int]
    labels: list[int]


def encode(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    """Token ids and labels; only the answer (and its end marker) carries loss."""
    prompt_text = tokenizer.apply_chat_template(
        example.messages(),
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt_ids: list[int] = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    # The end-of-turn token is part of the target so the adapter learns to stop.
    answer_ids: list[int] = tokenizer(
        example.response + tokenizer.eos_token, add_special_tokens=False
    )["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return Encoded(ids, labels)


def epochs(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless reshuffled epochs of example indices, cut into fixed-size batches."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            epoch = list(range(count))
            rng.shuffle(epoch)
            order.extend(epoch)
        yield order[:batch_size]
        del order[:batch_size]


class Step(NamedTuple):
    """One step's tensors, each (1, tokens): the rows end to end."""

    input_ids: Any
    labels: Any
    position_ids: Any


def collate(rows: Sequence[Encoded]) -> Step:
    """The rows end to end on one line, each row's positions from 0."""
    import torch

    def line(values: list[int]) -> Any:
        return torch.tensor([values], dtype=torch.long)

    return Step(
        line([token for row in rows for token in row.ids]),
        line([label for row in rows for label in row.labels]),
        line([position for row in rows for position in range(len(row.ids))]),
    )
