"""Deterministic verifiers: quick checks of an answer's text that need no model call.

A verifier is built once from its spec (`build(spec)`) and then called per answer:
`verifier(answer, prompt)` gives a `Verdict(passed, value, detail)`. `value` is what the
analysis averages: 1.0 or 0.0 for pass/fail checks, the share itself for `caps_share`, the
length for `length`, the expected language's probability for `language`.

Kinds: `json`, `json_schema`, `regex`, `length`, `refusal`, `language`, `caps_share`, `sql`.

Verifiers do no I/O (but the language detector's one lazy model load; `sql` works in an
in-memory SQLite database of its own per call), keep no state between calls and so are safe
to call from worker threads. They read no more than the first `MAX_ANSWER_CHARS` characters
of an answer: a longer answer is judged by its start (`length` in characters takes the whole
answer's `len`, which reads none of it), and the detail says so.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from functools import partial
from itertools import islice
from typing import Annotated, Any, Final, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from referencing.exceptions import Unresolvable

from gateway.quality.verdict import (
    MAX_ANSWER_CHARS,
    MAX_SCHEMA_CHARS,
    Check,
    Verdict,
    Verifier,
    VerifierSpecBase,
    cut,
    verdict,
)
from gateway.quality.verifier_sql import SqlSpec

# English refusal phrasings, searched case-insensitively (curly apostrophes folded first).
# Kept to phrasings that an ordinary answer does not use; a refusal in another language
# is not recognised.
REFUSALS: Final = (
    r"\bI(?:'m| am) (?:so |very |really )?(?:sorry|afraid),? (?:but )?I (?:can't|cannot|"
    r"can not|won't|will not|am unable|'m unable|am not able|'m not able)\b",
    # "I can't help but notice" is no refusal.
    r"\bI (?:can't|cannot|can not|won't|will not) (?:help(?! but\b| \w+ing\b)|assist|"
    r"provide|comply|fulfil|do that|answer that|support that|engage|participate)",
    r"\bI(?:'m| am) (?:unable|not able) to (?:help|assist|provide|comply|fulfil|do that|"
    r"answer|support|engage|share|give)",
    r"\bI (?:won't|will not) be able to\b",
    r"\bas an AI(?: language model| model| assistant)?,? I\b",
    r"\bas an AI language model\b",
    r"\bI (?:must|have to|need to) (?:respectfully )?(?:decline|refuse)\b",
    r"\bI(?:'m| am) not (?:comfortable|permitted|allowed) (?:to|with|helping|providing)\b",
    r"\b(?:sorry|apologi[sz]e),? (?:but )?I (?:can't|cannot|won't|will not|am unable)\b",
    r"\bthat(?:'s| is) not something I (?:can|will|am able to) (?:help|assist|do)\b",
    r"\b(?:it|this) (?:is|would be) against my (?:guidelines|policies|programming)\b",
)
# One alternation: a single pass over the answer instead of one per phrasing.
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSALS), re.IGNORECASE)
_FENCE = re.compile(r"\A\s*```[ \t]*(?:json)?[ \t]*\n(.*?)\n?[ \t]*```\s*\Z", re.S | re.I)


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _load_json(text: str, length: int) -> tuple[object, str]:
    """The parsed answer and where it was found; `_NotJson(detail)` when it does not parse."""
    fenced = _FENCE.match(text)
    where = " inside a ``` fence" if fenced else ""
    try:
        return json.loads(fenced.group(1) if fenced else text, parse_constant=_no_constant), where
    except (ValueError, RecursionError) as exc:
        raise _NotJson(f"not JSON{where}: {exc}{cut(length)}") from exc


def _check_json(text: str, length: int) -> Verdict:
    try:
        document, where = _load_json(text, length)
    except _NotJson as exc:
        return verdict(False, str(exc))
    return verdict(True, f"valid JSON ({type(document).__name__}){where}")


class JsonSpec(VerifierSpecBase):
    """`json`: the answer parses as JSON (a surrounding ``` or ```json fence is stripped)."""

    kind: Literal["json"] = "json"

    def _check(self) -> Check:
        return _check_json


def _remote_refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                yield value
            yield from _remote_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _remote_refs(item)


def _check_schema(validator: Any, text: str, length: int) -> Verdict:
    try:
        document, where = _load_json(text, length)
    except _NotJson as exc:
        return verdict(False, str(exc))
    try:
        error = next(iter(validator.iter_errors(document)), None)
    except Unresolvable as exc:
        return verdict(False, f"the schema cannot be applied: {exc}")
    if error is None:
        return verdict(True, f"valid JSON{where}, matches the schema")
    return verdict(False, f"{error.json_path}: {error.message}")


class JsonSchemaSpec(VerifierSpecBase):
    """`json_schema`: the answer parses as JSON and validates (JSON Schema Draft 2020-12;
    `format` is an annotation, as the draft has it, not checked)."""

    kind: Literal["json_schema"] = "json_schema"
    # `schema` would shadow a BaseModel method.
    json_schema: dict[str, Any] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(schema))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be plain JSON (no dates or other YAML types): {exc}") from exc
        if size > MAX_SCHEMA_CHARS:
            raise ValueError(f"is {size} characters as JSON, more than {MAX_SCHEMA_CHARS}")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            detail = f"{exc.json_path}: {exc.message}"
            raise ValueError(f"not a valid Draft 2020-12 schema: {detail}") from exc
        # The gateway fetches nothing: a reference must point inside the schema.
        remote = sorted(set(_remote_refs(schema)))
        if remote:
            raise ValueError(f"$ref outside the schema is not supported: {', '.join(remote)}")
        return schema

    def _check(self) -> Check:
        return partial(_check_schema, Draft202012Validator(self.json_schema))


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regex: {exc}") from exc
    return pattern


Pattern = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_compiles)]


def _check_regex(
    must: tuple[re.Pattern[str], ...], must_not: tuple[re.Pattern[str], ...], text: str, length: int
) -> Verdict:
    missing = [p.pattern for p in must if not p.search(text)]
    found = [p.pattern for p in must_not if p.search(text)]
    problems = [f"missing {p}" for p in missing] + [f"found {p}" for p in found]
    if problems:
        return verdict(False, "; ".join(problems) + cut(length))
    return verdict(True, f"{len(must)} required found, none of {len(must_not)} forbidden")


class RegexSpec(VerifierSpecBase):
    """`regex`: every `must` pattern is found and no `must_not` one (case-insensitive
    unless `case_sensitive`)."""

    kind: Literal["regex"] = "regex"
    must: list[Pattern] = Field(default_factory=list, max_length=50)
    must_not: list[Pattern] = Field(default_factory=list, max_length=50)
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _some_pattern(self) -> RegexSpec:
        if not self.must and not self.must_not:
            raise ValueError("give at least one pattern in must or must_not")
        return self

    def _check(self) -> Check:
        flags = 0 if self.case_sensitive else re.IGNORECASE
        must = tuple(re.compile(p, flags) for p in self.must)
        return partial(_check_regex, must, tuple(re.compile(p, flags) for p in self.must_not))


def _check_length(low: int | None, high: int | None, unit: str, text: str, length: int) -> Verdict:
    # Words are counted in what is read: past the bound the count is a lower bound.
    size = length if unit == "chars" else len(text.split())
    shown = f"{size}{'+' if unit == 'words' and length > MAX_ANSWER_CHARS else ''} {unit}"
    if low is not None and size < low:
        return verdict(False, f"{shown}, fewer than {low}", float(size))
    if high is not None and size > high:
        return verdict(False, f"{shown}, more than {high}", float(size))
    return verdict(True, shown, float(size))


class LengthSpec(VerifierSpecBase):
    """`length`: the answer's length in characters (or words, `unit: words`) is within
    `min_chars` and `max_chars` (the names hold for either unit)."""

    kind: Literal["length"] = "length"
    min_chars: int | None = Field(default=None, ge=0, le=10_000_000)
    max_chars: int | None = Field(default=None, ge=0, le=10_000_000)
    unit: Literal["chars", "words"] = "chars"

    @model_validator(mode="after")
    def _bounds(self) -> LengthSpec:
        if self.min_chars is None and self.max_chars is None:
            raise ValueError("give min_chars, max_chars or both")
        low, high = self.min_chars, self.max_chars
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_chars {low} is more than max_chars {high}")
        return self

    def _check(self) -> Check:
        return partial(_check_length, self.min_chars, self.max_chars, self.unit)


def refusal_phrase(text: str) -> str | None:
    """The first refusal phrasing (`REFUSALS`) found in `text`, or None."""
    found = _REFUSAL.search(text.replace("\u2019", "'"))
    return found.group(0) if found else None


def _check_refusal(expect: bool, text: str, length: int) -> Verdict:
    phrase = refusal_phrase(text)
    said = f"a refusal ({phrase!r})" if phrase else "not a refusal"
    return verdict((phrase is not None) == expect, said + cut(length))


class RefusalSpec(VerifierSpecBase):
    """`refusal`: passes when the answer is not a refusal, or, `expect: true`, when it is one
    (English phrasings only: see `REFUSALS`)."""

    kind: Literal["refusal"] = "refusal"
    expect: bool = False

    def _check(self) -> Check:
        return partial(_check_refusal, self.expect)


class _Detector:
    """py3langid's identifier with normalised probabilities, loaded on first use (the
    model takes about half a second to read) and shared: it is read-only afterwards."""

    _lock = threading.Lock()
    _identifier: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._identifier is None:
            with cls._lock:
                if cls._identifier is None:
                    # Imported here: only language verifiers need it (and numpy with it).
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    cls._identifier = LanguageIdentifier.from_model_file(
                        MODEL_FILE, norm_probs=True
                    )
        return cls._identifier


def detector_languages() -> frozenset[str]:
    """The codes the language detector knows (ISO 639-1, or 639-3 where 639-1 has none)."""
    return frozenset(str(label) for label in _Detector.get().labels)


def _check_language(expect: str, floor: float, text: str, length: int) -> Verdict:
    if len(list(islice(filter(str.isalpha, text), 3))) < 3:
        return verdict(False, "too short to tell its language (fewer than 3 letters)")
    ranking: list[tuple[str, float]] = _Detector.get().rank(text)
    probability = float(dict(ranking).get(expect, 0.0))
    best, best_probability = ranking[0]
    passed = probability >= floor
    said = f"{expect} with probability {probability:.3f}" + ("" if passed else f" < {floor}")
    if best != expect:
        said += f"; detected {best} ({float(best_probability):.3f})"
    return verdict(passed, said + cut(length), probability)


class LanguageSpec(VerifierSpecBase):
    """`language`: the detector (py3langid) gives the `expect`ed language at least
    `min_probability`."""

    kind: Literal["language"] = "language"
    expect: str = Field(min_length=2, max_length=3)
    min_probability: float = Field(default=0.5, gt=0.0, le=1.0)

    @field_validator("expect")
    @classmethod
    def _known(cls, code: str) -> str:
        known = detector_languages()
        if code not in known:
            raise ValueError(
                f"{code!r} is not a language code the detector knows (such as en, fr, de, es, "
                f"zh; {len(known)} in all)"
            )
        return code

    def _check(self) -> Check:
        return partial(_check_language, self.expect, self.min_probability)


def _check_caps(low: float | None, high: float | None, text: str, length: int) -> Verdict:
    upper = sum(1 for c in text if c.isupper())
    cased = upper + sum(1 for c in text if c.islower())
    if not cased:
        return verdict(False, "no cased letters", 0.0)
    share = upper / cased
    shown = f"{share:.3f} of {cased} letters are capitals{cut(length)}"
    if low is not None and share < low:
        return verdict(False, f"{shown}, less than {low}", share)
    if high is not None and share > high:
        return verdict(False, f"{shown}, more than {high}", share)
    return verdict(True, shown, share)


class CapsShareSpec(VerifierSpecBase):
    """`caps_share`: the share of cased letters that are capitals is within `min` and `max`."""

    kind: Literal["caps_share"] = "caps_share"
    min: float | None = Field(default=None, ge=0.0, le=1.0)
    max: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _bounds(self) -> CapsShareSpec:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is more than max {self.max}")
        return self

    def _check(self) -> Check:
        return partial(_check_caps, self.min, self.max)


AnyVerifierSpec = (
    JsonSpec
    | JsonSchemaSpec
    | RegexSpec
    | LengthSpec
    | RefusalSpec
    | LanguageSpec
    | CapsShareSpec
    | SqlSpec
)
# What a config's `kind` picks among.
VerifierSpec = Annotated[AnyVerifierSpec, Field(discriminator="kind")]


def build(spec: VerifierSpecBase) -> Verifier:
    """The verifier of a spec (compiled once; call it per answer)."""
    return spec.build()
