from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.client import GatewayClient
from adapters.lineage import Lineage
from adapters.loop import handle
from adapters.spec import LoadedSpec, load_spec

FINGERPRINT = "ab" * 32
SPEC = """\
name: pirate
output: runs
data:
  train: [train.jsonl]
evaluation:
  held_out: {share: 0.2}
"""
VERDICT = {"id": 11, "outcome": "rollback", "reason": "verifier pass rate fell", "stage": "canary"}


def unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request {request.method} {request.url}")


class FakeClient(GatewayClient):
    """Answers `evidence` with fixed rows and counts the calls; any other call fails."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(transport=httpx.MockTransport(unreachable))
        self.rows = rows
        self.calls: list[tuple[str | int, float | None]] = []

    def evidence(self, ref: str | int, *, reward_below: float | None = None) -> dict[str, Any]:
        self.calls.append((ref, reward_below))
        return {"object": "list", "data": list(self.rows), "next_after": None}


def evidence_row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": "canary",
        "id": 1,
        "request_id": "req-1",
        "at": "2024-01-01T00:00:00Z",
        "version": 2,
        "status": 200,
        "messages": None,
        "prompt": None,
        "answer": "Bonjour",
        "reasons": [{"signal": "verifier:pirate", "value": 0.0, "detail": "missing arr"}],
    }
    row.update(fields)
    return row


ROWS = [
    evidence_row(
        id=1,
        request_id="req-1",
        messages=[
            {"role": "system", "content": "Talk like a pirate."},
            {"role": "user", "content": "Hello?"},
        ],
        answer="Bonjour",
    ),
    evidence_row(id=2, request_id="req-2", prompt="Where is Paris?", answer="In France."),
    evidence_row(id=3, request_id="req-3", answer=None, reasons=[{"signal": "error"}]),
]


def event(
    kind: str = "rollout.rolled_back",
    *,
    route: str = "pirate",
    rollout: int = 7,
    version: int = 2,
    fingerprint: str = FINGERPRINT,
) -> dict[str, Any]:
    def version_of(number: int, lineage: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": route,
            "version": number,
            "sha256": "c" * 64,
            "base_model": "base",
            "lineage": lineage,
        }

    return {
        "type": kind,
        "timestamp": "2024-01-01T00:00:00Z",
        "data": {
            "rollout": {"id": rollout, "route": route, "stage": "canary", "step": 2},
            "versions": {
                "candidate": version_of(version, {"run_fingerprint": fingerprint}),
                "stable": version_of(version - 1, {"run_fingerprint": "cd" * 32}),
            },
            "actor": "analysis",
            "reason": "verifier pass rate fell",
            "detail": {"verdict": VERDICT["id"]},
            "verdict": VERDICT,
        },
    }


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedSpec:
    file = tmp_path / "pirate.yaml"
    file.write_text(SPEC, encoding="utf-8")
    return load_spec(file)


@pytest.fixture
def run_dir(loaded: LoadedSpec) -> Path:
    path = loaded.output / FINGERPRINT[:16]
    path.mkdir(parents=True)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rollback_records_the_verdict_in_the_runs_lineage(
    loaded: LoadedSpec, run_dir: Path
) -> None:
    outcome = handle(event(), [loaded], FakeClient(ROWS))

    record = Lineage(run_dir / "lineage.json").read()
    (recorded,) = record["events"]
    assert outcome.action == "lineage: rolled back"
    assert outcome.run_dir == run_dir
    assert recorded["event"] == "rolled_back"
    assert (recorded["version"], recorded["rollout"]) == (2, 7)
    assert recorded["verdict"] == VERDICT
    assert (recorded["actor"], recorded["reason"]) == ("analysis", "verifier pass rate fell")
    assert record["outcome"]["event"] == "rolled_back"


def test_rollback_exports_counterexamples_next_to_the_spec(
    loaded: LoadedSpec, run_dir: Path, tmp_path: Path
) -> None:
    outcome = handle(event(), [loaded], FakeClient(ROWS))

    path = tmp_path / "counterexamples" / "pirate-v2-rollout7.jsonl"
    assert outcome.counterexamples == path
    rows = read_jsonl(path)
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "Talk like a pirate."},
            {"role": "user", "content": "Hello?"},
        ],
        "meta": {
            "rejected": "Bonjour",
            "reasons": [{"signal": "verifier:pirate", "value": 0.0, "detail": "missing arr"}],
            "source": "canary",
            "request_id": "req-1",
            "version": 2,
            "rollout": 7,
        },
    }


def test_counterexamples_await_their_completion(loaded: LoadedSpec, run_dir: Path) -> None:
    outcome = handle(event(), [loaded], FakeClient(ROWS))

    assert outcome.counterexamples is not None
    rows = read_jsonl(outcome.counterexamples)
    assert [row["messages"][-1]["role"] for row in rows] == ["user", "user"]
    assert not any(m["role"] == "assistant" for row in rows for m in row["messages"])


def test_evidence_with_only_a_prompt_becomes_a_user_message(
    loaded: LoadedSpec, run_dir: Path
) -> None:
    outcome = handle(event(), [loaded], FakeClient(ROWS))

    assert outcome.counterexamples is not None
    second = read_jsonl(outcome.counterexamples)[1]
    assert second["messages"] == [{"role": "user", "content": "Where is Paris?"}]
    assert second["meta"]["rejected"] == "In France."


def test_evidence_without_text_is_skipped_and_counted(loaded: LoadedSpec, run_dir: Path) -> None:
    outcome = handle(event(), [loaded], FakeClient(ROWS))

    assert outcome.exported == 2
    assert outcome.counterexamples is not None
    assert [r["meta"]["request_id"] for r in read_jsonl(outcome.counterexamples)] == [
        "req-1",
        "req-2",
    ]
    recorded = Lineage(run_dir / "lineage.json").read()["events"][0]
    assert recorded["counterexamples"] == {
        "path": str(outcome.counterexamples),
        "rows": 2,
        "found": 3,
    }


def test_rollback_asks_for_the_rollouts_evidence_with_the_reward_threshold(
    loaded: LoadedSpec, run_dir: Path
) -> None:
    client = FakeClient(ROWS)

    handle(event(rollout=9), [loaded], client, reward_below=0.3)

    assert client.calls == [(9, 0.3)]


def test_redelivered_rollback_is_not_recorded_or_exported_twice(
    loaded: LoadedSpec, run_dir: Path
) -> None:
    client = FakeClient(ROWS)
    first = handle(event(), [loaded], client)
    assert first.counterexamples is not None
    first.counterexamples.unlink()

    again = handle(event(), [loaded], client)

    assert again.action == "already recorded"
    assert len(client.calls) == 1
    assert not first.counterexamples.exists()
    events = Lineage(run_dir / "lineage.json").read()["events"]
    assert [e["event"] for e in events] == ["rolled_back"]


def test_a_rollback_of_another_rollout_is_recorded_too(loaded: LoadedSpec, run_dir: Path) -> None:
    client = FakeClient(ROWS)
    handle(event(rollout=7), [loaded], client)

    outcome = handle(event(rollout=8), [loaded], client)

    assert outcome.action == "lineage: rolled back"
    events = Lineage(run_dir / "lineage.json").read()["events"]
    assert [e["rollout"] for e in events] == [7, 8]


def test_promotion_is_recorded_once_without_asking_for_evidence(
    loaded: LoadedSpec, run_dir: Path
) -> None:
    client = FakeClient(ROWS)

    first = handle(event("rollout.promoted"), [loaded], client)
    handle(event("rollout.promoted"), [loaded], client)

    record = Lineage(run_dir / "lineage.json").read()
    assert first.action == "lineage: promoted"
    assert [(e["event"], e["version"], e["rollout"]) for e in record["events"]] == [
        ("promoted", 2, 7)
    ]
    assert record["events"][0]["verdict"] == VERDICT
    assert record["outcome"]["event"] == "promoted"
    assert client.calls == []
    assert first.counterexamples is None


def test_an_unknown_route_is_ignored(loaded: LoadedSpec, run_dir: Path, tmp_path: Path) -> None:
    client = FakeClient(ROWS)

    outcome = handle(event(route="french"), [loaded], client)

    assert outcome.action == "ignored (no run of a known spec)"
    assert client.calls == []
    assert not (run_dir / "lineage.json").exists()
    assert not (tmp_path / "counterexamples").exists()


def test_a_fingerprint_with_no_run_is_ignored(loaded: LoadedSpec, run_dir: Path) -> None:
    client = FakeClient(ROWS)

    outcome = handle(event(fingerprint="ef" * 32), [loaded], client)

    assert outcome.action == "ignored (no run of a known spec)"
    assert client.calls == []


def test_a_candidate_without_lineage_is_ignored(loaded: LoadedSpec, run_dir: Path) -> None:
    body = event()
    body["data"]["versions"]["candidate"]["lineage"] = {}

    outcome = handle(body, [loaded], FakeClient(ROWS))

    assert outcome.action == "ignored (no run of a known spec)"


@pytest.mark.parametrize("kind", ["rollout.started", "rollout.advanced", ""])
def test_other_events_are_ignored(loaded: LoadedSpec, run_dir: Path, kind: str) -> None:
    client = FakeClient(ROWS)

    outcome = handle(event(kind), [loaded], client)

    assert outcome.action == "ignored (not a promotion or rollback)"
    assert client.calls == []
    assert not (run_dir / "lineage.json").exists()


def test_logged_prompt_text_is_split_back_into_messages() -> None:
    from adapters.loop import split_roles

    text = "system: Reply in JSON.\nuser: Order 3 pens\nfor Ann, please."
    assert split_roles(text) == [
        {"role": "system", "content": "Reply in JSON."},
        {"role": "user", "content": "Order 3 pens\nfor Ann, please."},
    ]
    assert split_roles("Once upon a time") == [{"role": "user", "content": "Once upon a time"}]
