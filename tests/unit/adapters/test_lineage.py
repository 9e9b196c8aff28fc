from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from adapters.lineage import Lineage


def test_a_record_not_written_yet_reads_as_no_events(tmp_path: Path) -> None:
    assert Lineage(tmp_path / "lineage.json").read() == {"events": []}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_an_unreadable_record_reads_as_no_events(tmp_path: Path, text: str) -> None:
    path = tmp_path / "lineage.json"
    path.write_text(text, encoding="utf-8")

    assert Lineage(path).read() == {"events": []}


def test_record_appends_the_event_with_its_fields_and_time(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path / "lineage.json")

    lineage.record("registered", version=3, gateway="http://g")
    lineage.record("evaluated", passed=True)

    events = json.loads((tmp_path / "lineage.json").read_text(encoding="utf-8"))["events"]
    assert [
        (e["event"], {k: v for k, v in e.items() if k not in {"event", "at"}}) for e in events
    ] == [
        ("registered", {"version": 3, "gateway": "http://g"}),
        ("evaluated", {"passed": True}),
    ]
    assert all(e["at"].endswith("+00:00") for e in events)


def test_record_sets_the_latest_fields_at_the_top_level(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path / "lineage.json")

    lineage.record("registered", version=3)
    data = lineage.record("registered", version=4, gateway="http://g")

    assert data["version"] == 4
    assert data["gateway"] == "http://g"
    assert lineage.read() == data


@pytest.mark.parametrize("event", ["promoted", "rolled_back", "refused_by_gates", "made_stable"])
def test_a_final_event_sets_the_outcome(tmp_path: Path, event: str) -> None:
    lineage = Lineage(tmp_path / "lineage.json")

    data = lineage.record(event, version=2)

    assert data["outcome"] == {"event": event, "at": data["events"][-1]["at"]}


def test_an_intermediate_event_sets_no_outcome(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path / "lineage.json")

    assert "outcome" not in lineage.record("registered", version=2)


def test_has_matches_the_event_and_every_field_given(tmp_path: Path) -> None:
    lineage = Lineage(tmp_path / "lineage.json")
    lineage.record("rolled_back", rollout=7, version=2)

    assert lineage.has("rolled_back")
    assert lineage.has("rolled_back", rollout=7)
    assert lineage.has("rolled_back", rollout=7, version=2)
    assert not lineage.has("rolled_back", rollout=8)
    assert not lineage.has("promoted", rollout=7)


def test_concurrent_writers_lose_no_event(tmp_path: Path) -> None:
    path = tmp_path / "lineage.json"
    writers, each = 8, 15
    start = threading.Barrier(writers)

    def write(writer: int) -> None:
        lineage = Lineage(path)
        start.wait()
        for n in range(each):
            lineage.record("tick", writer=writer, n=n)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = Lineage(path).read()["events"]
    assert sorted((e["writer"], e["n"]) for e in events) == [
        (w, n) for w in range(writers) for n in range(each)
    ]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
