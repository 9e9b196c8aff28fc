from __future__ import annotations

import hashlib
import json
import re
import shutil
from importlib import resources
from pathlib import Path

import pytest

import adapters.demo as demo
from adapters.demo import (
    DEMO_ADAPTERS,
    EVAL_PROMPTS,
    adapter_dir,
    ensure_demo_adapters,
    is_current,
    parse_jsonl,
)
from adapters.styles import classify_style
from adapters.train import Example, TrainConfig, dataset_sha256, fingerprint

# Topics of the held-out prompts: a training prompt on the same subject would leak.
EVAL_TOPICS = {"snow", "cat", "cats", "france", "sleep", "sleeping", "bird", "birds", "tea"}
EVAL_TOPICS |= {"book", "books", "volcano", "volcanoes", "bicycle", "dinner", "clean", "room"}
EVAL_TOPICS |= {"teacher", "teachers"}
NAMES = [adapter.name for adapter in DEMO_ADAPTERS]


def _normal(prompt: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", prompt.lower()))


def test_demo_adapters_are_pirate_french_shout_and_cowboy() -> None:
    assert NAMES == ["pirate", "french", "shout", "cowboy"]


@pytest.mark.parametrize("adapter", DEMO_ADAPTERS, ids=NAMES)
def test_dataset_loads_with_a_demo_sized_set_of_unique_prompts(adapter: demo.DemoAdapter) -> None:
    examples = adapter.examples()
    assert 40 <= len(examples) <= 80
    assert len({_normal(ex.prompt) for ex in examples}) == len(examples)
    assert all(ex.prompt.strip() and ex.response.strip() for ex in examples)


@pytest.mark.parametrize("adapter", DEMO_ADAPTERS, ids=NAMES)
def test_no_training_prompt_overlaps_the_evaluation_prompts(adapter: demo.DemoAdapter) -> None:
    held_out = {_normal(prompt) for prompt in EVAL_PROMPTS}
    for example in adapter.examples():
        assert _normal(example.prompt) not in held_out
        assert not set(_normal(example.prompt).split()) & EVAL_TOPICS, example.prompt


@pytest.mark.parametrize("adapter", DEMO_ADAPTERS, ids=NAMES)
def test_every_training_answer_shows_its_adapters_style(adapter: demo.DemoAdapter) -> None:
    wrong = [
        ex.response for ex in adapter.examples() if classify_style(ex.response) != adapter.name
    ]
    assert wrong == []


@pytest.mark.parametrize("adapter", DEMO_ADAPTERS, ids=NAMES)
def test_shipped_file_is_canonical_so_its_sha256_matches_the_manifest(
    adapter: demo.DemoAdapter,
) -> None:
    raw = resources.files("adapters").joinpath("demo", adapter.dataset).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == dataset_sha256(adapter.examples())


@pytest.mark.parametrize("adapter", DEMO_ADAPTERS, ids=NAMES)
def test_training_config_fits_the_cpu_budget(adapter: demo.DemoAdapter) -> None:
    config = adapter.config
    assert 12 <= config.steps <= 30
    assert (config.rank, config.alpha) == (8, 16)
    assert set(config.target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_eval_prompts_include_the_documented_examples() -> None:
    assert len(EVAL_PROMPTS) >= 8
    assert {"Tell me about snow.", "Describe a cat."} <= set(EVAL_PROMPTS)


def test_parse_jsonl_skips_blank_lines_and_rejects_incomplete_rows() -> None:
    good = '{"prompt": "Hi", "response": "Hello"}\n\n'
    assert parse_jsonl(good) == [Example("Hi", "Hello")]
    with pytest.raises(ValueError, match="line 2"):
        parse_jsonl(good.strip() + '\n{"prompt": "Hi", "response": ""}\n')


def test_fingerprint_changes_with_data_config_and_base() -> None:
    data = [Example("a", "b")]
    base = Path("/models/base")
    reference = fingerprint(data, TrainConfig(), base)
    assert reference == fingerprint(list(data), TrainConfig(), base)
    assert reference != fingerprint([Example("a", "c")], TrainConfig(), base)
    assert reference != fingerprint(data, TrainConfig(steps=21), base)
    assert reference != fingerprint(data, TrainConfig(top_layers=15), base)
    assert reference != fingerprint(data, TrainConfig(), Path("/models/other"))


def _fake_train(calls: list[str]):  # type: ignore[no-untyped-def]
    def train(
        base_dir: Path, examples: list[Example], out_dir: Path, config: TrainConfig, **kw: object
    ) -> Path:
        calls.append(out_dir.parent.name)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        (out_dir / "adapter_config.json").write_text("{}")
        (out_dir / "adapter_model.safetensors").write_bytes(b"weights")
        manifest = {"fingerprint": fingerprint(examples, config, base_dir)}
        (out_dir / "manifest.json").write_text(json.dumps(manifest))
        return out_dir

    return train


def test_ensure_demo_adapters_trains_missing_ones_and_skips_current_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(demo, "train_lora", _fake_train(calls))
    base = tmp_path / "base"

    first = ensure_demo_adapters(base, tmp_path / "adapters")
    assert calls == NAMES
    assert first == {name: tmp_path / "adapters" / name / "v1" for name in NAMES}

    calls.clear()
    assert ensure_demo_adapters(base, tmp_path / "adapters") == first
    assert calls == []


def test_an_adapter_with_a_stale_fingerprint_is_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(demo, "train_lora", _fake_train(calls))
    root = tmp_path / "adapters"
    ensure_demo_adapters(tmp_path / "base", root)
    stale = adapter_dir(root, "french")
    (stale / "manifest.json").write_text(json.dumps({"fingerprint": "old"}))
    assert not is_current(stale, "new")

    calls.clear()
    ensure_demo_adapters(tmp_path / "base", root)
    assert calls == ["french"]


def test_an_adapter_missing_its_weights_is_not_current(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": "f"}))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert not is_current(tmp_path, "f")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"w")
    assert is_current(tmp_path, "f")
