from __future__ import annotations

from pathlib import Path

import pytest

from adapters.pipeline import STAGED_FILES, stage
from gateway.registry.validation import content_sha256

FILES = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
    "adapter_model.safetensors": b"not really weights, but bytes to hash",
    "manifest.json": b'{"run_fingerprint": "ab"}',
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs" / "pirate" / "abababababababab"
    path.mkdir(parents=True)
    for name, data in FILES.items():
        (path / name).write_bytes(data)
    (path / "lineage.json").write_text("{}")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "adapter-root"
    path.mkdir()
    return path


def test_stage_copies_the_three_files_under_name_and_sha_prefix(run_dir: Path, root: Path) -> None:
    relative, sha = stage(run_dir, root, "pirate")

    assert relative == f"pirate/{sha[:16]}"
    staged = root / relative
    assert sorted(p.name for p in staged.iterdir()) == sorted(STAGED_FILES)
    assert {name: (staged / name).read_bytes() for name in STAGED_FILES} == FILES


def test_stage_returns_the_sha_the_gateway_computes_of_the_staged_dir(
    run_dir: Path, root: Path
) -> None:
    relative, sha = stage(run_dir, root, "pirate")

    assert sha == content_sha256(root / relative)
    assert sha == content_sha256(run_dir)


def test_a_second_stage_is_a_no_op(run_dir: Path, root: Path) -> None:
    relative, sha = stage(run_dir, root, "pirate")
    staged = root / relative
    before = {name: (staged / name).stat() for name in STAGED_FILES}

    again = stage(run_dir, root, "pirate")

    after = {name: (staged / name).stat() for name in STAGED_FILES}
    assert again == (relative, sha)
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in after.items()} == {
        n: (s.st_ino, s.st_mtime_ns) for n, s in before.items()
    }
    assert [p.name for p in (root / "pirate").iterdir()] == [sha[:16]]


def test_other_weights_stage_to_a_directory_of_their_own(run_dir: Path, root: Path) -> None:
    first, _ = stage(run_dir, root, "pirate")
    (run_dir / "adapter_model.safetensors").write_bytes(b"other weights")

    second, sha = stage(run_dir, root, "pirate")

    assert second != first
    assert (root / first).is_dir()
    assert content_sha256(root / second) == sha


def test_a_staged_dir_whose_weights_changed_is_staged_again(run_dir: Path, root: Path) -> None:
    relative, sha = stage(run_dir, root, "pirate")
    (root / relative / "adapter_model.safetensors").write_bytes(b"tampered")

    assert stage(run_dir, root, "pirate") == (relative, sha)

    assert content_sha256(root / relative) == sha
    assert [p.name for p in (root / "pirate").iterdir()] == [sha[:16]]


def test_a_staged_dir_missing_its_weights_is_staged_again(run_dir: Path, root: Path) -> None:
    # BUG (adapters/pipeline.py:190): content_sha256 of the damaged target raises
    # FileNotFoundError instead of the target being replaced, as a changed file is.
    relative, sha = stage(run_dir, root, "pirate")
    (root / relative / "adapter_model.safetensors").unlink()

    assert stage(run_dir, root, "pirate") == (relative, sha)

    assert content_sha256(root / relative) == sha


def test_a_run_missing_a_file_stages_nothing(run_dir: Path, root: Path) -> None:
    (run_dir / "manifest.json").unlink()

    with pytest.raises(FileNotFoundError):
        stage(run_dir, root, "pirate")

    assert list((root / "pirate").iterdir()) == []
