"""The example tasks: the checked-in data is what the generator makes, every file reads, the
specs name only files that exist, and the evaluation sets are clean of training rows but for
the one golden row put there on purpose."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from adapters.contamination import ContaminationIndex
from adapters.data import read_dataset
from adapters.examples import json_extract_data, make_datasets, sql_data
from adapters.metrics import TaskMetrics
from adapters.spec import LoadedSpec, load_spec, missing_files, spec_paths

EXAMPLES = Path(make_datasets.__file__).resolve().parent
TASKS = list(make_datasets.TASKS)
MAX_FILE_BYTES = 200_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    make_datasets.main(["--out", str(out)])
    return out


def spec_of(task: str, file: str = "spec.yaml") -> LoadedSpec:
    return load_spec(EXAMPLES / task / file)


def rows_of(loaded: LoadedSpec, relative: str) -> list[str]:
    return [row.response for row in read_dataset(loaded.path(relative)).rows]


def test_the_checked_in_files_are_what_the_generator_writes(generated: Path) -> None:
    made = sorted(p.relative_to(generated) for p in generated.rglob("*") if p.is_file())
    assert made, "the generator wrote nothing"
    for relative in made:
        assert (EXAMPLES / relative).read_bytes() == (generated / relative).read_bytes(), relative


def test_every_data_file_in_the_examples_is_generated(generated: Path) -> None:
    checked_in = {
        p.relative_to(EXAMPLES)
        for pattern in ("*.jsonl", "*/data/*.jsonl", "*/fixture.sql")
        for p in EXAMPLES.glob(pattern)
    }
    assert checked_in == {p.relative_to(generated) for p in generated.rglob("*") if p.is_file()}


def test_every_file_parses_and_is_small(generated: Path) -> None:
    for path in generated.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < MAX_FILE_BYTES, path
        if path.suffix == ".jsonl":
            assert read_dataset(path).rows, path


def test_the_generator_is_deterministic() -> None:
    assert make_datasets.generate() == make_datasets.generate()


@pytest.mark.parametrize("task", TASKS)
def test_the_spec_loads_and_names_only_files_that_exist(task: str) -> None:
    loaded = spec_of(task)
    assert missing_files(loaded) == []
    assert loaded.spec.evaluation.held_out.path == "data/test.jsonl"
    assert loaded.spec.evaluation.general == "../general.jsonl"
    # The dev set tunes; nothing the pipeline judges by may read it.
    assert all(path.name != "dev.jsonl" for _, path in spec_paths(loaded))


@pytest.mark.parametrize("task", TASKS)
def test_evaluation_sets_share_nothing_with_training_but_one_golden_row(task: str) -> None:
    loaded = spec_of(task)
    data = loaded.spec.data
    training = [
        r for item in data.train + data.replay for r in read_dataset(loaded.path(item)).rows
    ]
    index = ContaminationIndex(training, loaded.spec.evaluation.ngram)
    named = {"held_out": "data/test.jsonl", "dev": "data/dev.jsonl", "general": "../general.jsonl"}
    named |= {f"slices.{k}": v for k, v in loaded.spec.evaluation.slices.items()}
    for name, relative in named.items():
        _, found = index.split(read_dataset(loaded.path(relative)).rows)
        assert found == [], name
    golden = loaded.spec.evaluation.golden
    assert golden is not None
    _, found = index.split(read_dataset(loaded.path(golden)).rows)
    assert [(o.index, o.kind) for o in found] == [(0, "exact")]


@pytest.mark.parametrize("task", TASKS)
def test_every_reference_passes_the_tasks_verifiers(task: str) -> None:
    loaded = spec_of(task)
    metrics = TaskMetrics(["verifier_pass"], loaded.spec.task.verifiers)
    for relative in ("data/train.jsonl", "data/dev.jsonl", "data/test.jsonl", "data/golden.jsonl"):
        failed = [
            (answer, metrics.failed_verifiers(answer))
            for answer in rows_of(loaded, relative)
            if metrics.failed_verifiers(answer)
        ]
        assert failed == [], relative


def test_the_json_specs_schema_is_the_generators() -> None:
    (verifier,) = spec_of("json_extract").spec.task.verifiers
    assert verifier.model_dump(by_alias=True)["schema"] == json_extract_data.SCHEMA


def test_the_sql_specs_schema_is_the_fixtures() -> None:
    loaded = spec_of("sql")
    (verifier,) = loaded.spec.task.verifiers
    assert verifier.model_dump(by_alias=True)["schema"] == sql_data.SCHEMA
    assert loaded.spec.task.sql_fixture is not None
    assert loaded.path(loaded.spec.task.sql_fixture).read_text().startswith(sql_data.SCHEMA)


def test_every_sql_reference_answers_something_on_the_fixture() -> None:
    loaded = spec_of("sql")
    db = sqlite3.connect(":memory:")
    db.executescript(loaded.path("fixture.sql").read_text())
    for relative in ("data/train.jsonl", "data/test.jsonl", "data/golden.jsonl"):
        for query in rows_of(loaded, relative):
            found = db.execute(query).fetchall()
            assert found and found not in ([(0,)], [(None,)]), query


def test_shuffled_training_pairs_each_prompt_with_another_rows_completion() -> None:
    data = EXAMPLES / "json_extract" / "data"
    train = read_dataset(data / "train.jsonl").rows
    shuffled = read_dataset(data / "train_shuffled.jsonl").rows
    assert [r.prompt for r in shuffled] == [r.prompt for r in train]
    assert sorted(r.response for r in shuffled) == sorted(r.response for r in train)
    assert all(a.response != b.response for a, b in zip(train, shuffled, strict=True))


def test_the_bad_spec_is_the_good_one_on_shuffled_targets() -> None:
    good = yaml.safe_load((EXAMPLES / "json_extract" / "spec.yaml").read_text())
    bad = yaml.safe_load((EXAMPLES / "json_extract" / "bad.yaml").read_text())
    assert bad.pop("data") == {**good.pop("data"), "train": ["data/train_shuffled.jsonl"]}
    bad.pop("description")
    good.pop("description")
    assert bad == good
    assert missing_files(spec_of("json_extract", "bad.yaml")) == []


def test_general_questions_have_short_references() -> None:
    rows = read_dataset(EXAMPLES / "general.jsonl").rows
    assert 25 <= len(rows) <= 40
    assert all(len(r.response.split()) <= 2 for r in rows)
    assert len({r.prompt for r in rows}) == len(rows)


def test_rows_are_written_as_prompt_completion_json() -> None:
    first = (EXAMPLES / "json_extract" / "data" / "test.jsonl").read_text().splitlines()[0]
    assert list(json.loads(first)) == ["system", "prompt", "completion"]
