"""Adapter directories are checked before any engine sees them: every bad input is a 400."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.errors import InvalidRequest
from gateway.registry.validation import (
    BaseModelInfo,
    confine,
    content_sha256,
    validate_adapter,
)
from gateway.testing.adapters import MODULES, TINY_BASE, write_adapter

BASE = TINY_BASE
_write_adapter = write_adapter


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    _write_adapter(root / "pirate" / "v1")
    return root


def _refused(root: Path, relative: str, **kwargs: object) -> InvalidRequest:
    options: dict[str, object] = {"max_rank": 16, **kwargs}
    with pytest.raises(InvalidRequest) as refused:
        validate_adapter(root, relative, BASE, **options)  # type: ignore[arg-type]
    assert refused.value.status_code == 400
    return refused.value


def test_a_good_adapter_passes_with_its_rank_targets_and_content_hash(root: Path) -> None:
    got = validate_adapter(root, "pirate/v1", BASE, max_rank=16)

    assert got.rank == 2
    assert got.target_modules == sorted(MODULES)
    assert got.sha256 == content_sha256(root / "pirate" / "v1")
    assert validate_adapter(root, "pirate/v1", BASE, max_rank=16, expected_sha256=got.sha256)


def test_the_content_hash_ignores_the_manifest_but_not_the_weights(root: Path) -> None:
    directory = root / "pirate" / "v1"
    before = content_sha256(directory)
    (directory / "manifest.json").write_text('{"steps": 30}')
    assert content_sha256(directory) == before

    with (directory / "adapter_model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    assert content_sha256(directory) != before


def test_wrong_sha256_is_refused(root: Path) -> None:
    refused = _refused(root, "pirate/v1", expected_sha256="0" * 64)
    assert refused.param == "sha256"


def test_an_adapter_for_another_base_model_is_refused(root: Path) -> None:
    wider = BaseModelInfo.from_config(
        "wider",
        {
            "hidden_size": 16,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
        },
    )
    _write_adapter(root / "other" / "v1", base=wider)
    assert "another base model" in _refused(root, "other/v1").message


def test_a_rank_above_the_maximum_is_refused(root: Path) -> None:
    _write_adapter(root / "big" / "v1", rank=32)
    assert "maximum LoRA rank 16" in _refused(root, "big/v1").message


def test_target_modules_the_base_lacks_are_refused(root: Path) -> None:
    directory = root / "pirate" / "v1"
    config = json.loads((directory / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "c_attn"]
    (directory / "adapter_config.json").write_text(json.dumps(config))
    assert "c_attn" in _refused(root, "pirate/v1").message


@pytest.mark.parametrize("relative", ["/etc", "~/x", "../adapters/pirate/v1", "pirate/../../x", ""])
def test_paths_outside_the_root_are_refused(root: Path, relative: str) -> None:
    assert _refused(root, relative).param == "path"


def test_a_symlinked_directory_leading_outside_is_refused(root: Path, tmp_path: Path) -> None:
    _write_adapter(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / "escape")
    assert "outside the adapter root" in _refused(root, "escape").message


def test_a_symlinked_file_leading_outside_is_refused(root: Path, tmp_path: Path) -> None:
    outside = _write_adapter(tmp_path / "elsewhere")
    directory = root / "linked" / "v1"
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text((outside / "adapter_config.json").read_text())
    os.symlink(outside / "adapter_model.safetensors", directory / "adapter_model.safetensors")
    assert "links outside" in _refused(root, "linked/v1").message


def test_a_symlink_inside_the_root_is_followed(root: Path) -> None:
    os.symlink(root / "pirate" / "v1", root / "current")
    assert validate_adapter(root, "current", BASE, max_rank=16).rank == 2


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_missing_files_are_refused(root: Path, missing: str) -> None:
    (root / "pirate" / "v1" / missing).unlink()
    assert missing in _refused(root, "pirate/v1").message


def test_a_missing_directory_is_refused(root: Path) -> None:
    assert _refused(root, "nobody/v1").param == "path"


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"r": "eight", "target_modules": ["q_proj"]}']
)
def test_malformed_adapter_config_is_refused(root: Path, text: str) -> None:
    (root / "pirate" / "v1" / "adapter_config.json").write_text(text)
    _refused(root, "pirate/v1")


def test_a_weights_file_that_is_not_safetensors_is_refused(root: Path) -> None:
    (root / "pirate" / "v1" / "adapter_model.safetensors").write_bytes(b"\xff" * 16)
    _refused(root, "pirate/v1")


def test_confine_returns_the_resolved_directory(root: Path) -> None:
    assert confine(root, "pirate/v1") == (root / "pirate" / "v1").resolve()
