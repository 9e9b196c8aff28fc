from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.data import MAX_PROBLEMS, parse_row, read_dataset, split_held_out
from adapters.spec import SpecError
from adapters.train import Example


def line(row: Any) -> bytes:
    return json.dumps(row).encode()


def messages(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


def problem(row: bytes) -> str:
    with pytest.raises(ValueError) as caught:
        parse_row(row)
    return str(caught.value)


def test_a_messages_row_keeps_earlier_messages_as_history() -> None:
    row = messages(
        ("system", "Talk like a pirate."),
        ("user", "Hi"),
        ("assistant", "Ahoy"),
        ("user", "Where is Paris?"),
        ("assistant", "In France, matey."),
    )

    assert parse_row(line(row)) == Example(
        "Where is Paris?",
        "In France, matey.",
        (("system", "Talk like a pirate."), ("user", "Hi"), ("assistant", "Ahoy")),
    )


def test_a_prompt_completion_row_is_an_example() -> None:
    assert parse_row(line({"prompt": "2+2?", "completion": "4"})) == Example("2+2?", "4")


def test_a_prompt_completion_row_with_system_has_it_as_history() -> None:
    row = {"system": "Be brief.", "prompt": "2+2?", "completion": "4"}

    assert parse_row(line(row)) == Example("2+2?", "4", (("system", "Be brief."),))


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "a", "completion": "b", "id": "r1", "meta": {"source": "x"}},
        {**messages(("user", "a"), ("assistant", "b")), "id": 3, "meta": {}},
    ],
)
def test_id_and_meta_are_allowed_and_kept_out_of_the_example(row: dict[str, Any]) -> None:
    assert parse_row(line(row)) == Example("a", "b")


def test_a_message_may_carry_a_name() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a", "name": "ann"},
            {"role": "assistant", "content": "b"},
        ]
    }

    assert parse_row(line(row)) == Example("a", "b")


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "a", "completion": "b", "answer": "c"},
        {**messages(("user", "a"), ("assistant", "b")), "answer": "c"},
    ],
)
def test_an_unknown_field_is_refused_by_name(row: dict[str, Any]) -> None:
    assert problem(line(row)) == "unknown field(s) 'answer'"


def test_the_last_message_must_be_the_assistants() -> None:
    row = messages(("user", "a"), ("assistant", "b"), ("user", "c"))

    assert problem(line(row)) == "the last message must be the assistant's (the completion)"


def test_the_message_before_the_completion_must_be_the_users() -> None:
    row = messages(("system", "a"), ("assistant", "b"))

    assert problem(line(row)) == "the message before the completion must be the user's"


def test_an_unknown_role_is_refused_with_its_index() -> None:
    row = messages(("user", "a"), ("robot", "b"))

    assert problem(line(row)).startswith("messages[1].role must be one of ")


def test_a_single_message_is_refused() -> None:
    assert problem(line(messages(("assistant", "b")))).startswith(
        '"messages" must be a list of at least'
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "a"}, '"completion" must be a non-empty string'),
        ({"prompt": "  ", "completion": "b"}, '"prompt" must be a non-empty string'),
        ({"prompt": 1, "completion": "b"}, '"prompt" must be a non-empty string'),
        ({"prompt": "a\u0000b", "completion": "b"}, '"prompt" holds a NUL character'),
    ],
)
def test_prompt_and_completion_must_be_non_empty_text_without_nul(
    row: dict[str, Any], expected: str
) -> None:
    assert problem(line(row)) == expected


def test_a_nul_in_a_message_is_refused_with_its_index() -> None:
    row = messages(("user", "a"), ("assistant", "b\u0000"))

    assert problem(line(row)) == 'messages[1]."content" holds a NUL character'


def test_a_raw_nul_byte_is_not_json() -> None:
    assert problem(b'{"prompt": "a\x00", "completion": "b"}').startswith("not JSON: ")


def test_bad_utf8_is_refused_with_the_byte_offset() -> None:
    assert problem(b'{"prompt": "caf\xe9", "completion": "b"}') == "not UTF-8 (byte 15)"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[1, 2]", "a row is a JSON object"),
        (b'{"text": "a"}', 'a row needs "messages", or "prompt" and "completion"'),
    ],
)
def test_a_row_must_be_an_object_of_a_known_shape(raw: bytes, expected: str) -> None:
    assert problem(raw) == expected


def write(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = line({"prompt": "a", "completion": "b"})


def test_read_dataset_reads_every_row_and_hashes_the_bytes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl", GOOD, b"", b"   ", line(messages(("user", "c"), ("assistant", "d")))
    )

    dataset = read_dataset(path)

    assert dataset.rows == (Example("a", "b"), Example("c", "d"))
    assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_bad_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        GOOD,
        b"{oops",
        b"",
        line({"prompt": "a", "completion": "b", "extra": 1}),
        b"\xff\xfe",
        GOOD,
    )

    with pytest.raises(SpecError) as caught:
        read_dataset(path)

    problems = caught.value.problems
    assert [p.split(": ")[0] for p in problems] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert problems[1] == f"{path}:4: unknown field(s) 'extra'"
    assert problems[2] == f"{path}:5: not UTF-8 (byte 0)"


def test_reading_stops_after_the_problem_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", *([b"nope"] * (MAX_PROBLEMS + 5)))

    with pytest.raises(SpecError) as caught:
        read_dataset(path)

    problems = caught.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == f"{path}: stopped after {MAX_PROBLEMS} problems"


def test_a_file_with_no_rows_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", b"", b"  ")

    with pytest.raises(SpecError) as caught:
        read_dataset(path)

    assert caught.value.problems == [f"{path}:1: the file holds no rows"]


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"

    with pytest.raises(SpecError) as caught:
        read_dataset(path)

    assert caught.value.problems[0].startswith(f"{path}: cannot read: ")


def test_dataset_lineage_shows_the_path_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    dataset = read_dataset(write(tmp_path / "data" / "d.jsonl", GOOD, GOOD))

    assert dataset.lineage(tmp_path) == {
        "path": "data/d.jsonl",
        "sha256": dataset.sha256,
        "rows": 2,
    }


ROWS = [Example(f"prompt {i}", f"answer {i}") for i in range(20)]


def test_split_held_out_is_disjoint_and_covers_every_row() -> None:
    train, held = split_held_out(ROWS, 0.25, seed=1)

    assert len(held) == 5
    assert len(train) == 15
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(ROWS)


def test_split_held_out_is_the_same_for_the_same_seed() -> None:
    assert split_held_out(ROWS, 0.25, seed=3) == split_held_out(ROWS, 0.25, seed=3)


def test_split_held_out_differs_between_seeds() -> None:
    held_by_seed = {tuple(split_held_out(ROWS, 0.25, seed=s)[1]) for s in range(5)}

    assert len(held_by_seed) > 1


def test_split_held_out_keeps_at_least_one_row_on_each_side() -> None:
    assert [len(part) for part in split_held_out(ROWS[:3], 0.01, seed=0)] == [2, 1]
    assert [len(part) for part in split_held_out(ROWS[:2], 0.5, seed=0)] == [1, 1]


def test_split_held_out_keeps_the_rows_in_file_order() -> None:
    train, held = split_held_out(ROWS, 0.5, seed=7)

    assert train == sorted(train, key=ROWS.index)
    assert held == sorted(held, key=ROWS.index)


@pytest.mark.parametrize("count", [0, 1])
def test_split_held_out_needs_two_rows(count: int) -> None:
    with pytest.raises(SpecError) as caught:
        split_held_out(ROWS[:count], 0.2, seed=0)

    assert caught.value.problems == ["evaluation.held_out.share: needs at least two training rows"]
