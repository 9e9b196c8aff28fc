"""A step's rows end to end on one line, positions restarting at each row; epochs of rows."""

from __future__ import annotations

import pytest

from adapters.batching import IGNORE, Encoded, epochs

torch = pytest.importorskip("torch")

from adapters.batching import collate  # noqa: E402
from adapters.row_attention import row_starts  # noqa: E402


def test_collate_puts_the_rows_end_to_end_with_their_own_positions() -> None:
    rows = [Encoded([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4]), Encoded([7, 8], [IGNORE, 8])]
    rows.append(Encoded([9, 10, 11], [IGNORE, 10, 11]))
    step = collate(rows)
    assert step.input_ids.tolist() == [[1, 2, 3, 4, 7, 8, 9, 10, 11]]
    assert step.labels.tolist() == [[IGNORE, IGNORE, 3, 4, IGNORE, 8, IGNORE, 10, 11]]
    assert step.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert row_starts(step.position_ids[0]) == [0, 4, 6]


def test_epochs_cover_every_row_once_per_epoch_and_repeat_with_the_seed() -> None:
    first = epochs(10, 4, seed=3)
    batches = [next(first) for _ in range(5)]
    assert sorted(i for b in batches for i in b) == sorted([*range(10), *range(10)])
    again = epochs(10, 4, seed=3)
    assert [next(again) for _ in range(5)] == batches
    other = epochs(10, 4, seed=4)
    assert [next(other) for _ in range(5)] != batches
