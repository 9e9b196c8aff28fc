"""`lora-gateway routes calibrate` on the demo table and its labelled prompts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from gateway.cli import app
from gateway.routing import embedder as embedder_module
from gateway.routing.embedder import OnnxEmbedder, Vectors
from gateway.routing.table import (
    demo_table_path,
    demo_test_path,
    demo_tuning_path,
    parse_table,
    read_table_source,
)

DEMO_LABELS = [r.name for r in parse_table(read_table_source("demo")).routes] + ["default"]


@dataclass
class BatchMemo:
    """The real embedder; a batch already embedded (same texts, same order) is not redone."""

    inner: OnnxEmbedder
    batches: dict[tuple[str, ...], Vectors]

    def embed(self, texts: list[str]) -> Vectors:
        key = tuple(texts)
        if key not in self.batches:
            self.batches[key] = self.inner.embed(texts)
        return self.batches[key]

    def __getattr__(self, name: str) -> Any:
        # The model's files and token limit (the command keys its vector cache by them).
        return getattr(self.inner, name)


@dataclass
class Loads:
    """`load_embedder` as the command calls it, with batches shared across invocations."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[tuple[str, ...], Vectors] = field(default_factory=dict)

    def __call__(self, cache_dir: Path, **kwargs: Any) -> BatchMemo:
        self.calls.append({"cache_dir": cache_dir, **kwargs})
        return BatchMemo(real_load_embedder(cache_dir, **kwargs), self.batches)


real_load_embedder = embedder_module.load_embedder


@pytest.fixture(scope="module")
def loads() -> Iterator[Loads]:
    # The command imports `load_embedder` when it runs, so the module attribute is what it
    # calls. Each invocation still loads the real model; only the embedding of a batch seen
    # before is reused, which keeps the three full evaluations of this file cheap.
    spy = Loads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedder_module, "load_embedder", spy)
        yield spy


def calibrate(*args: str) -> Result:
    return CliRunner().invoke(app, ["routes", "calibrate", *args])


def flat(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Run:
    result: Result
    markdown: str


@pytest.fixture(scope="module")
def human(loads: Loads, tmp_path_factory: pytest.TempPathFactory) -> Run:
    markdown = tmp_path_factory.mktemp("calibrate") / "r.md"
    result = calibrate(str(demo_tuning_path()), "--markdown", str(markdown))
    assert result.exit_code == 0, result.output
    return Run(result, markdown.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def as_json(loads: Loads) -> dict[str, Any]:
    result = calibrate(str(demo_tuning_path()), "--json")
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def test_json_report(as_json: dict[str, Any], loads: Loads) -> None:
    assert as_json["samples"] >= 300
    accuracy = as_json["accuracy"]
    assert accuracy["value"] >= 0.85
    assert accuracy["ci95"][0] < accuracy["value"] < accuracy["ci95"][1]
    assert accuracy["total"] == as_json["samples"]
    assert as_json["offtopic_to_adapter"]["value"] <= as_json["max_offtopic"] == 0.05
    assert as_json["threshold"] is None  # the table's own thresholds
    assert as_json["labels"] == DEMO_LABELS
    confusion = as_json["confusion"]
    assert isinstance(confusion, list) and len(confusion) == len(DEMO_LABELS)
    assert all(len(row) == len(DEMO_LABELS) for row in confusion)
    assert sum(map(sum, confusion)) == as_json["samples"]
    diagonal = sum(confusion[i][i] for i in range(len(confusion)))
    assert diagonal == accuracy["hits"]
    assert len(as_json["mistakes"]) == as_json["samples"] - diagonal
    assert [r["route"] for r in as_json["routes"]] == DEMO_LABELS
    assert len(as_json["sweep"]) == 101
    assert as_json["suggested_threshold"] is not None
    # The command loaded the model with the gateway's default settings.
    assert loads.calls and loads.calls[-1]["max_tokens"] == 64


def test_human_report_and_markdown(human: Run, as_json: dict[str, Any]) -> None:
    output = flat(human.result.stdout)
    match = re.search(r"(\d+) prompts at the table's thresholds: accuracy (\d+\.\d)%", output)
    assert match is not None, output
    assert int(match[1]) == as_json["samples"]
    assert float(match[2]) == pytest.approx(100 * as_json["accuracy"]["value"], abs=0.05)
    low, high = as_json["accuracy"]["ci95"]
    assert f"95% CI {low:.1%}-{high:.1%}" in output
    assert "confusion matrix" in output
    assert "precision" in output and "recall" in output

    markdown = human.markdown
    assert f"labelled set `{demo_tuning_path().name}`" in markdown
    assert "| kind | accuracy | prompts |" in markdown and "| multi_turn |" in markdown
    assert "| route | precision | recall | support | routed here |" in markdown
    for stats in as_json["routes"]:
        row = (
            f"| {stats['route']} | {stats['precision']:.1%} | {stats['recall']:.1%} "
            f"| {stats['support']} | {stats['predicted']} |"
        )
        assert row in markdown
    assert "Confusion matrix" in markdown
    assert "| label \\ routed | " + " | ".join(DEMO_LABELS) + " |" in markdown
    for label, counts in zip(as_json["labels"], as_json["confusion"], strict=True):
        assert f"| {label} | " + " | ".join(map(str, counts)) + " |" in markdown


def test_the_demo_table_is_the_default(as_json: dict[str, Any]) -> None:
    for table in ("demo", str(demo_table_path())):
        result = calibrate(str(demo_tuning_path()), "--json", "--table", table)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == as_json


def test_max_offtopic_reaches_the_report(loads: Loads, as_json: dict[str, Any]) -> None:
    result = calibrate(str(demo_tuning_path()), "--json", "--max-offtopic", "0")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["max_offtopic"] == 0
    assert payload["accuracy"] == as_json["accuracy"]
    suggested = payload["suggested_threshold"]
    if suggested is not None:
        point = next(p for p in payload["sweep"] if p["threshold"] == suggested)
        assert point["offtopic_to_adapter"] == 0


def test_a_fractional_limit_is_printed_as_it_was_given(loads: Loads) -> None:
    result = calibrate(str(demo_tuning_path()), "--max-offtopic", "0.025")
    assert result.exit_code == 0, result.output
    assert "(off-topic limit 2.5%)" in flat(result.output)


def test_a_missing_data_file_fails_cleanly(loads: Loads, tmp_path: Path) -> None:
    before = len(loads.calls)
    missing = tmp_path / "nope.jsonl"
    result = calibrate(str(missing))
    assert result.exit_code == 1
    assert "error:" in result.stderr
    assert str(missing) in flat(result.stderr)
    assert "No such file" in result.stderr
    assert "Traceback" not in result.output
    assert len(loads.calls) == before  # failed before loading the model


def test_a_bad_line_in_the_data_file_fails_cleanly(loads: Loads, tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    data.write_text('{"text": "Ahoy", "route": "pirate"}\n{"text": "x", "route": "ufo"}\n')
    result = calibrate(str(data))
    assert result.exit_code == 1
    assert "line 2: route 'ufo' is not in the table" in flat(result.stderr)


def test_an_invalid_table_fails_cleanly(loads: Loads, tmp_path: Path) -> None:
    before = len(loads.calls)
    table = tmp_path / "routes.yaml"
    table.write_text(
        "routes:\n"
        "  - name: pirate\n"
        "    adapter: pirate\n"
        "    patterns: ['(unclosed']\n"
        "    utterances: ['Talk like a pirate']\n",
        encoding="utf-8",
    )
    result = calibrate(str(demo_tuning_path()), "--table", str(table))
    assert result.exit_code == 1
    message = flat(result.stderr)
    assert "error: invalid route table" in message
    assert "pattern '(unclosed' is not a valid regex" in message
    assert "Traceback" not in result.output
    assert len(loads.calls) == before


def test_a_missing_table_file_fails_cleanly(tmp_path: Path) -> None:
    result = calibrate(str(demo_tuning_path()), "--table", str(tmp_path / "none.yaml"))
    assert result.exit_code == 1
    assert "error: cannot read" in flat(result.stderr)
    assert "none.yaml" in flat(result.stderr)


def test_bad_settings_fail_cleanly_before_loading_the_model(loads: Loads) -> None:
    before = len(loads.calls)
    result = CliRunner(env={"GATEWAY_ROUTING__THREADS": "0"}).invoke(
        app, ["routes", "calibrate", str(demo_tuning_path())]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: GATEWAY_ROUTING__THREADS: ")
    assert "Traceback" not in result.output
    assert len(loads.calls) == before


def evaluate(*args: str) -> Result:
    return CliRunner().invoke(app, ["routes", "evaluate", *args])


@pytest.fixture(scope="module")
def assessed(loads: Loads, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    markdown = tmp_path_factory.mktemp("evaluate") / "e.md"
    result = evaluate(
        "--tune",
        str(demo_tuning_path()),
        "--test",
        str(demo_test_path()),
        "--crossfit",
        "--folds",
        "5",
        "--max-offtopic",
        "0.02",
        "--json",
        "--markdown",
        str(markdown),
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), markdown.read_text(encoding="utf-8")


def test_evaluate_chooses_on_the_tuning_set_and_measures_the_test_set(
    assessed: tuple[Any, str], as_json: dict[str, Any]
) -> None:
    payload, markdown = assessed
    tuning, test = payload["tuning"], payload["test"]
    # The threshold is what the tuning set suggests (out of fold) under the limit ...
    assert payload["threshold"] == tuning["suggested_threshold"]
    assert tuning["max_offtopic"] == 0.02 and tuning["samples"] == as_json["samples"]
    # ... and the test set is decided at that threshold, whatever it would suggest itself.
    assert test["threshold"] == payload["threshold"]
    point = next(p for p in test["sweep"] if p["threshold"] == payload["threshold"])
    assert point["accuracy"] == pytest.approx(test["accuracy"]["value"])
    assert test["samples"] >= 400 and test["samples"] != tuning["samples"]
    assert set(test["kinds"]) >= {"on_topic", "off_topic", "near_miss", "multi_turn"}
    assert f"threshold {payload['threshold']:.2f}, chosen on `tuning.jsonl`" in markdown
    assert "scored out of fold: each by a head trained without its fold, 5 folds" in markdown
    assert "Test set `test.jsonl`:" in markdown


def test_evaluate_cross_validates_the_choice(assessed: tuple[Any, str]) -> None:
    payload, markdown = assessed
    folds = payload["folds"]
    assert len(folds) == 5
    assert sum(f["size"] for f in folds) == payload["tuning"]["samples"]
    assert all(0.0 <= f["accuracy"] <= 1.0 for f in folds)
    assert "5-fold cross-validation on the tuning set" in markdown


def test_evaluate_refuses_in_sample_scores_of_prompts_the_table_learns_from(
    loads: Loads,
) -> None:
    before = len(loads.calls)
    result = evaluate("--tune", str(demo_tuning_path()), "--test", str(demo_test_path()))
    assert result.exit_code == 1
    message = flat(result.stderr)
    assert "tuning prompts are utterances of the table" in message
    assert "pass --crossfit" in message
    assert len(loads.calls) == before


def test_evaluate_refuses_a_test_set_the_table_learns_from(loads: Loads, tmp_path: Path) -> None:
    before = len(loads.calls)
    (tmp_path / "tune.jsonl").write_text('{"text": "Sum 2 and 2", "route": "default"}\n')
    (tmp_path / "test.jsonl").write_text('{"text": "Who was Blackbeard?", "route": "pirate"}\n')
    result = evaluate(
        "--tune", str(tmp_path / "tune.jsonl"), "--test", str(tmp_path / "test.jsonl")
    )
    assert result.exit_code == 1
    assert "1 test prompts are utterances of the table" in flat(result.stderr)
    assert len(loads.calls) == before


def test_evaluate_refuses_one_set_for_both(loads: Loads) -> None:
    before = len(loads.calls)
    path = str(demo_tuning_path())
    result = evaluate("--tune", path, "--test", path)
    assert result.exit_code == 1
    assert "must be different files" in flat(result.stderr)
    assert len(loads.calls) == before


def test_evaluate_refuses_sets_that_share_prompts(loads: Loads, tmp_path: Path) -> None:
    before = len(loads.calls)
    shared = '{"text": "Ahoy, where is the treasure?", "route": "pirate"}\n'
    (tmp_path / "a.jsonl").write_text(shared + '{"text": "Sum 2 and 2", "route": "default"}\n')
    (tmp_path / "b.jsonl").write_text(shared)
    result = evaluate("--tune", str(tmp_path / "a.jsonl"), "--test", str(tmp_path / "b.jsonl"))
    assert result.exit_code == 1
    assert "1 prompts are in both sets" in flat(result.stderr)
    assert len(loads.calls) == before
