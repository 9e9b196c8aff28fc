"""What a run's lineage says about a version is read per gateway: a run registered, made
stable or refused on one gateway is new to another."""

from __future__ import annotations

from pathlib import Path

from adapters.lineage import Lineage
from adapters.pipeline import PreparedData
from adapters.steps import Staged, finished

HERE = "http://127.0.0.1:8000"
THERE = "http://10.0.0.5:8000"


def _staged(tmp_path: Path, gateway: str, version: int = 1) -> Staged:
    lineage = Lineage(tmp_path / "lineage.json")
    return Staged(tmp_path, version, lineage, PreparedData((), (), ()), gateway)


def test_a_version_released_on_another_gateway_is_not_finished_here(tmp_path: Path) -> None:
    there = _staged(tmp_path, THERE)
    there.record("evaluated", passed=True)
    there.record("made_stable")

    here = _staged(tmp_path, HERE)

    assert finished(there) is not None and "made stable" in str(finished(there))
    assert finished(here) is None
    assert there.passed() and not here.passed()


def test_the_latest_evaluation_on_this_gateway_decides(tmp_path: Path) -> None:
    here = _staged(tmp_path, HERE)
    here.record("evaluated", passed=True)
    here.record("evaluated", passed=False)

    assert not here.passed()


def test_a_refusal_names_the_failed_gates(tmp_path: Path) -> None:
    here = _staged(tmp_path, HERE)
    here.record("refused_by_gates", failed="min held_out.exact_match (0.1 < 0.5)")

    assert "refused by gates" in str(finished(here))
    assert "min held_out.exact_match" in str(finished(here))
    assert finished(_staged(tmp_path, HERE, version=2)) is None
