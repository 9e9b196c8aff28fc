"""The demo loop's three versions of an example: a first round that is weaker by
construction, the example's spec itself, and a broken one; all valid specs."""

from __future__ import annotations

import shutil
from pathlib import Path

from adapters.demo_loop import EXAMPLES, _variant_specs
from adapters.spec import load_spec, missing_files


def test_the_first_round_trains_half_as_long_and_the_broken_one_on_other_data(
    tmp_path: Path,
) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    first, spec, broken = _variant_specs(examples / "json_extract")

    full = load_spec(spec).spec
    weak = load_spec(first).spec
    bad = load_spec(broken).spec
    assert weak.training.steps == full.training.steps // 2 > 0
    assert {k: v / 2 for k, v in full.gates.min.items()} == weak.gates.min != {}
    # Everything else is the example's: same data, sets, verifiers, rollout plan and SLO.
    assert weak.data == full.data and weak.evaluation == full.evaluation
    assert weak.rollout == full.rollout and weak.task == full.task
    assert bad.data.train == ["../french/data/train.jsonl"] != full.data.train
    assert bad.gates == full.gates
    for path in (first, spec, broken):
        assert missing_files(load_spec(path)) == []
