from __future__ import annotations

from adapters.contamination import ContaminationIndex, Overlap, fold
from adapters.train import Example

TRAINING = [
    Example("What is the capital of France?", "Paris, of course."),
    Example(
        "Tell me about cats.",
        "Cats are small carnivorous mammals that people keep as pets all over the world.",
        (("system", "You are a careful zoologist who answers in full sentences."),),
    ),
]


def test_fold_lowers_case_and_collapses_white_space() -> None:
    assert fold("  Hello \t  WORLD\n again ") == "hello world again"


def test_a_training_prompt_is_found_exactly_after_folding() -> None:
    index = ContaminationIndex(TRAINING, n=8)

    assert index.find(Example("  what is the CAPITAL of\tfrance? ", "Lyon")) == (
        "exact",
        "the prompt is a training prompt",
    )


def test_a_run_of_n_shared_words_is_an_ngram_overlap() -> None:
    index = ContaminationIndex(TRAINING, n=8)
    row = Example("Describe a pet.", "Small carnivorous mammals that people keep as pets, mostly.")

    kind, detail = index.find(row) or ("", "")

    assert kind == "ngram"
    assert detail == (
        "shares 8 words with training data: 'small carnivorous mammals that people keep as pets'"
    )


def test_fewer_than_n_shared_words_are_not_an_overlap() -> None:
    index = ContaminationIndex(TRAINING, n=8)
    row = Example("Describe a pet.", "Carnivorous mammals that people keep as pets, mostly.")

    assert index.find(row) is None


def test_case_and_punctuation_do_not_hide_an_ngram_overlap() -> None:
    index = ContaminationIndex(TRAINING, n=4)

    assert index.find(Example("Q", "PEOPLE -- keep... as; PETS!")) is not None


def test_a_shared_system_prompt_does_not_make_every_row_contaminated() -> None:
    # Every row of a task carries the same system prompt: only prompt and answer count.
    index = ContaminationIndex(TRAINING, n=6)
    system = next(ex.history for ex in TRAINING if ex.history)

    assert index.find(Example("Who are you?", "Careful zoologist who answers in full")) is None
    assert index.find(Example("How do volcanoes form?", "Magma rises.", system)) is None


def test_an_unrelated_row_is_clean() -> None:
    index = ContaminationIndex(TRAINING, n=3)

    assert index.find(Example("How do volcanoes form?", "Magma rises through the crust.")) is None


def test_split_keeps_clean_rows_and_reports_overlaps_by_index() -> None:
    index = ContaminationIndex(TRAINING, n=8)
    clean_row = Example("How do volcanoes form?", "Magma rises through the crust.")
    rows = [
        clean_row,
        Example("what is the capital of france?", "Paris"),
        Example("Pets?", "small carnivorous mammals that people keep as pets all over"),
    ]

    clean, found = index.split(rows)

    assert clean == [clean_row]
    assert [(o.index, o.kind) for o in found] == [(1, "exact"), (2, "ngram")]
    assert isinstance(found[0], Overlap)
