"""The deterministic verifiers: each kind's verdicts, values, details and spec checks."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.quality import verifiers
from gateway.quality.verdict import DETAIL_CHARS, MAX_ANSWER_CHARS, Verdict
from gateway.quality.verifiers import (
    CapsShareSpec,
    JsonSchemaSpec,
    JsonSpec,
    LanguageSpec,
    LengthSpec,
    RefusalSpec,
    RegexSpec,
    VerifierSpec,
    build,
    detector_languages,
    refusal_phrase,
)

FRENCH = (
    "La lune est le seul satellite naturel de la Terre. Elle reflète la lumière du soleil, "
    "et sa gravité attire les océans pour faire les marées."
)
ENGLISH = (
    "The moon is Earth's only natural satellite. It reflects the light of the sun, and its "
    "gravity pulls on the oceans to make the tides."
)
SHOUTED = "WOW! THE MOON IS EARTH'S ONLY NATURAL SATELLITE!!! IT MAKES THE TIDES!!!"

SPEC = TypeAdapter(VerifierSpec)


def spec_of(**fields: Any) -> Any:
    """A spec as the configuration would read it (the `kind` picks the class)."""
    return SPEC.validate_python(fields)


def check(answer: str, **fields: Any) -> Verdict:
    return build(spec_of(**fields))(answer)


def refused(**fields: Any) -> list[str]:
    """The messages of the spec's validation errors."""
    with pytest.raises(ValidationError) as info:
        spec_of(**fields)
    return [str(error["msg"]) for error in info.value.errors()]


# -- common ------------------------------------------------------------------------------


def test_verdict_is_immutable() -> None:
    verdict = Verdict(True, 1.0, "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.passed = False  # type: ignore[misc]


def test_name_defaults_to_the_kind() -> None:
    assert build(spec_of(kind="json")).name == "json"
    assert build(spec_of(kind="json", name="is_json")).name == "is_json"


def test_the_kind_picks_the_spec_class() -> None:
    assert isinstance(spec_of(kind="refusal"), RefusalSpec)
    assert isinstance(spec_of(kind="caps_share", min=0.5), CapsShareSpec)


def test_unknown_fields_and_out_of_range_sample_rates_are_refused() -> None:
    assert refused(kind="json", colour="red")
    assert refused(kind="json", sample_rate=1.5)
    assert refused(kind="json", name="Not A Name")


def test_details_are_bounded() -> None:
    long_pattern = "x" * 400
    verdict = check("nothing here", kind="regex", must=[long_pattern, long_pattern + "y"])
    assert not verdict.passed
    assert len(verdict.detail) <= DETAIL_CHARS


# -- json --------------------------------------------------------------------------------


def test_json_passes_on_an_object() -> None:
    verdict = check('{"answer": 42}', kind="json")
    assert verdict == Verdict(True, 1.0, "valid JSON (dict)")


def test_json_strips_a_surrounding_fence_and_says_so() -> None:
    verdict = check('```json\n{"answer": [1, 2]}\n```\n', kind="json")
    assert verdict.passed and "fence" in verdict.detail


def test_json_fails_on_prose_with_the_parser_message() -> None:
    verdict = check("Sure! Here is the JSON: {}", kind="json")
    assert (verdict.passed, verdict.value) == (False, 0.0)
    assert verdict.detail.startswith("not JSON: Expecting value")


def test_json_refuses_nan_which_is_not_json() -> None:
    assert not check('{"x": NaN}', kind="json").passed


def test_json_fails_on_deep_nesting_instead_of_raising() -> None:
    assert not check("[" * 30_000 + "]" * 30_000, kind="json").passed


def test_json_past_the_bound_is_judged_by_its_start_and_says_so() -> None:
    answer = '["' + "a" * MAX_ANSWER_CHARS + '"]'
    verdict = check(answer, kind="json")
    assert not verdict.passed
    assert f"read the first {MAX_ANSWER_CHARS} of {len(answer)} characters" in verdict.detail


# -- json_schema -------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name"],
}


def test_json_schema_passes_on_a_matching_document() -> None:
    assert check('{"name": "Ada", "tags": ["x"]}', kind="json_schema", schema=PERSON).passed


def test_json_schema_failure_names_the_path_and_the_message() -> None:
    verdict = check('{"name": "Ada", "tags": ["x", 3]}', kind="json_schema", schema=PERSON)
    assert not verdict.passed
    assert verdict.detail == "$.tags[1]: 3 is not of type 'string'"


def test_json_schema_fails_on_text_that_is_not_json() -> None:
    verdict = check("Ada", kind="json_schema", schema=PERSON)
    assert not verdict.passed and verdict.detail.startswith("not JSON")


def test_json_schema_detail_is_bounded() -> None:
    schema = {"type": "object", "required": ["k" * 500]}
    verdict = check("{}", kind="json_schema", schema=schema)
    assert not verdict.passed and len(verdict.detail) == DETAIL_CHARS


def test_json_schema_refuses_an_invalid_schema() -> None:
    [message] = refused(kind="json_schema", schema={"type": "strng"})
    assert "not a valid Draft 2020-12 schema: $.type" in message


def test_json_schema_refuses_a_reference_outside_the_schema() -> None:
    [message] = refused(kind="json_schema", schema={"$ref": "https://example.com/s.json"})
    assert "https://example.com/s.json" in message


def test_json_schema_with_a_dangling_local_reference_fails_the_answer_instead_of_raising() -> None:
    verdict = check("1", kind="json_schema", schema={"$ref": "#/$defs/missing"})
    assert not verdict.passed and "cannot be applied" in verdict.detail


def test_json_schema_validator_is_compiled_once_per_build(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    original = verifiers.Draft202012Validator

    def counting(schema: Any) -> Any:
        made.append(schema)
        return original(schema)

    spec = spec_of(kind="json_schema", schema=PERSON)
    monkeypatch.setattr(verifiers, "Draft202012Validator", counting)
    verifier = build(spec)
    for _ in range(3):
        assert verifier('{"name": "Ada"}').passed
    assert len(made) == 1


# -- regex -------------------------------------------------------------------------------


def test_regex_passes_when_every_must_pattern_is_found() -> None:
    verdict = check("Arr, matey!", kind="regex", must=[r"\barr+\b", r"\bmatey\b"])
    assert (verdict.passed, verdict.value) == (True, 1.0)


def test_regex_names_the_missing_pattern() -> None:
    verdict = check("Arr!", kind="regex", must=[r"\barr+\b", r"\bmatey\b"])
    assert (verdict.passed, verdict.detail) == (False, r"missing \bmatey\b")


def test_regex_fails_when_a_must_not_pattern_is_found() -> None:
    verdict = check("As a large language model...", kind="regex", must_not=["language model"])
    assert (verdict.passed, verdict.detail) == (False, "found language model")


def test_regex_ignores_case_unless_told_otherwise() -> None:
    assert check("ARR", kind="regex", must=["arr"]).passed
    assert not check("ARR", kind="regex", must=["arr"], case_sensitive=True).passed


def test_regex_refuses_an_invalid_pattern_at_its_index() -> None:
    with pytest.raises(ValidationError) as info:
        spec_of(kind="regex", must=["ok", "("])
    [error] = info.value.errors()
    assert error["loc"] == ("regex", "must", 1)
    assert "not a valid regex" in error["msg"]


def test_regex_bounds_the_number_and_length_of_patterns() -> None:
    assert refused(kind="regex", must=["a"] * 51)
    assert refused(kind="regex", must_not=["a" * 501])


def test_regex_needs_at_least_one_pattern() -> None:
    assert refused(kind="regex") == ["Value error, give at least one pattern in must or must_not"]


# -- length ------------------------------------------------------------------------------


def test_length_value_is_the_length_in_characters() -> None:
    verdict = check("hello", kind="length", max_chars=10)
    assert verdict == Verdict(True, 5.0, "5 chars")


def test_length_fails_past_either_bound() -> None:
    assert check("hello", kind="length", min_chars=6).detail == "5 chars, fewer than 6"
    assert not check("hello", kind="length", max_chars=4).passed
    assert check("hello", kind="length", min_chars=5, max_chars=5).passed


def test_length_counts_words_when_asked() -> None:
    verdict = check("one two  three\nfour", kind="length", max_chars=3, unit="words")
    assert (verdict.passed, verdict.value) == (False, 4.0)


def test_length_in_characters_counts_the_whole_answer() -> None:
    verdict = check("a" * (MAX_ANSWER_CHARS + 10), kind="length", max_chars=100_000)
    assert verdict.value == MAX_ANSWER_CHARS + 10


def test_length_needs_a_bound_and_an_order() -> None:
    assert refused(kind="length") == ["Value error, give min_chars, max_chars or both"]
    assert refused(kind="length", min_chars=10, max_chars=5) == [
        "Value error, min_chars 10 is more than max_chars 5"
    ]


# -- refusal -----------------------------------------------------------------------------

REFUSALS = [
    "I can't help with that.",
    "I'm sorry, but I cannot do that.",
    "I\u2019m sorry, but I can\u2019t share that.",
    "As an AI language model, I do not have opinions.",
    "I am unable to provide that information.",
    "I won't be able to assist with this request.",
    "I must decline this request.",
    "I CAN'T HELP WITH THAT!!!",
]
NOT_REFUSALS = [
    "You can't go wrong with pasta.",
    "I can help with that! Here it is.",
    "I'm sorry to hear that. Here are some tips.",
    "The team was unable to finish on time.",
    "I can't help but notice how bright the moon is tonight.",
    "I cannot help thinking of the sea.",
]


@pytest.mark.parametrize("answer", REFUSALS)
def test_refusal_fails_a_refusal_by_default(answer: str) -> None:
    verdict = check(answer, kind="refusal")
    assert (verdict.passed, verdict.value) == (False, 0.0)
    assert verdict.detail.startswith("a refusal")


@pytest.mark.parametrize("answer", NOT_REFUSALS)
def test_refusal_passes_an_ordinary_answer(answer: str) -> None:
    assert refusal_phrase(answer) is None
    assert check(answer, kind="refusal").passed


def test_refusal_expected_passes_only_on_a_refusal() -> None:
    assert check(REFUSALS[0], kind="refusal", expect=True).passed
    assert not check(NOT_REFUSALS[0], kind="refusal", expect=True).passed


# -- language ----------------------------------------------------------------------------


def test_language_detects_french_with_high_probability() -> None:
    verdict = check(FRENCH, kind="language", expect="fr")
    assert verdict.passed and verdict.value > 0.9


def test_language_fails_english_when_french_is_expected_and_names_it() -> None:
    verdict = check(ENGLISH, kind="language", expect="fr")
    assert not verdict.passed and verdict.value < 0.05
    assert "detected en" in verdict.detail


def test_language_reads_shouted_text() -> None:
    assert check(SHOUTED, kind="language", expect="en").passed


def test_language_min_probability_sets_the_bar() -> None:
    verdict = check(FRENCH, kind="language", expect="fr", min_probability=1.0)
    assert not verdict.passed and "< 1.0" in verdict.detail


@pytest.mark.parametrize("answer", ["", "ok", "12 + 3 = 15 !"])
def test_language_fails_an_answer_too_short_to_tell(answer: str) -> None:
    verdict = check(answer, kind="language", expect="en")
    assert (verdict.passed, verdict.value) == (False, 0.0)
    assert "too short" in verdict.detail


def test_language_refuses_a_code_the_detector_does_not_know() -> None:
    [message] = refused(kind="language", expect="xx")
    assert "'xx' is not a language code the detector knows" in message
    assert {"en", "fr", "de"} <= detector_languages()


def test_language_verifier_gives_the_same_verdicts_from_many_threads() -> None:
    verifier = build(spec_of(kind="language", expect="fr"))
    answers = [FRENCH, ENGLISH, SHOUTED] * 40
    alone = [verifier(answer) for answer in answers]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(verifier, answers)) == alone


# -- caps_share --------------------------------------------------------------------------


def test_caps_share_passes_shouted_text_and_reports_the_share() -> None:
    verdict = check(SHOUTED, kind="caps_share", min=0.6)
    assert verdict.passed and verdict.value == 1.0


def test_caps_share_fails_ordinary_text() -> None:
    verdict = check(ENGLISH, kind="caps_share", min=0.6)
    assert not verdict.passed and verdict.value < 0.1


def test_caps_share_max_bounds_shouting() -> None:
    assert not check(SHOUTED, kind="caps_share", max=0.5).passed
    assert check(ENGLISH, kind="caps_share", max=0.5).passed


def test_caps_share_counts_only_cased_letters() -> None:
    assert check("ABC 123 !!! 東京", kind="caps_share", min=1.0).value == 1.0


def test_caps_share_fails_an_answer_without_letters() -> None:
    assert check("42 !!!", kind="caps_share", min=0.6) == Verdict(False, 0.0, "no cased letters")


def test_caps_share_needs_a_bound_and_an_order() -> None:
    assert refused(kind="caps_share") == ["Value error, give min, max or both"]
    assert refused(kind="caps_share", min=0.8, max=0.2)
    assert refused(kind="caps_share", min=1.5)


def test_specs_build_the_same_verifier_as_build() -> None:
    spec = LengthSpec(max_chars=3)
    assert build(spec)("abcd") == spec.build()("abcd")
    assert isinstance(spec_of(kind="json"), JsonSpec)
    assert isinstance(spec_of(kind="json_schema", schema={}), JsonSchemaSpec)
    assert isinstance(spec_of(kind="regex", must=["a"]), RegexSpec)
    assert isinstance(spec_of(kind="language", expect="fr"), LanguageSpec)
