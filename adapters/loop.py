"""Closing the loop: what the pipeline does when the gateway promotes or rolls back a version
it registered.

The gateway's rollout webhook names the route and both versions with their lineage (the
manifest summary `register` sent, which holds the run's fingerprint), so the run directory
is found from the spec alone. A promotion is recorded in the run's lineage. A rollback is
recorded with the verdict behind it, and the answers that sank the candidate (failed
verifiers, low reward, negative feedback, errors: the gateway's `evidence` of the rollout)
are exported next to the spec as JSONL counterexamples for the next round.

Deliveries are at least once: an event already recorded for the same rollout is not
recorded or exported twice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from adapters.client import GatewayClient
from adapters.pipeline import lineage_of
from adapters.spec import LoadedSpec

HANDLED: Final = frozenset({"rollout.promoted", "rollout.rolled_back"})


@dataclass(frozen=True)
class Outcome:
    """What handling one event did."""

    event: str
    route: str
    version: int | None
    action: str
    run_dir: Path | None = None
    counterexamples: Path | None = None
    exported: int = 0


def find_run(specs: Sequence[LoadedSpec], route: str, lineage: dict[str, Any]) -> Path | None:
    """The run directory of the spec for `route` whose fingerprint the lineage names."""
    fingerprint = lineage.get("run_fingerprint")
    if not isinstance(fingerprint, str):
        return None
    for loaded in specs:
        if loaded.spec.name != route:
            continue
        run_dir = loaded.output / fingerprint[:16]
        if run_dir.is_dir():
            return run_dir
    return None


def spec_of(specs: Sequence[LoadedSpec], route: str) -> LoadedSpec | None:
    """The spec that trains `route`."""
    return next((s for s in specs if s.spec.name == route), None)


def handle(
    body: dict[str, Any],
    specs: Sequence[LoadedSpec],
    client: GatewayClient,
    *,
    reward_below: float | None = None,
) -> Outcome:
    """Handle one verified webhook body (`{"type", "timestamp", "data"}`)."""
    kind = str(body.get("type", ""))
    data = body.get("data") or {}
    rollout = data.get("rollout") or {}
    route = str(rollout.get("route", ""))
    candidate = (data.get("versions") or {}).get("candidate") or {}
    version = candidate.get("version")
    if kind not in HANDLED:
        return Outcome(kind, route, version, "ignored (not a promotion or rollback)")
    run_dir = find_run(specs, route, candidate.get("lineage") or {})
    if run_dir is None:
        return Outcome(kind, route, version, "ignored (no run of a known spec)")
    lineage = lineage_of(run_dir)
    rollout_id = rollout.get("id")
    if kind == "rollout.promoted":
        if not lineage.has("promoted", rollout=rollout_id):
            lineage.record(
                "promoted",
                gateway=client.url,
                version=version,
                rollout=rollout_id,
                verdict=data.get("verdict"),
            )
        return Outcome(kind, route, version, "lineage: promoted", run_dir)
    if lineage.has("rolled_back", rollout=rollout_id):
        return Outcome(kind, route, version, "already recorded", run_dir)
    loaded = spec_of(specs, route)
    if loaded is None or not isinstance(rollout_id, int):
        return Outcome(kind, route, version, "ignored (no rollout id)", run_dir)
    evidence = client.evidence(rollout_id, reward_below=reward_below)
    path, count = export_counterexamples(loaded.root, route, version, rollout_id, evidence)
    lineage.record(
        "rolled_back",
        gateway=client.url,
        version=version,
        rollout=rollout_id,
        verdict=data.get("verdict"),
        actor=data.get("actor"),
        reason=data.get("reason"),
        counterexamples={"path": str(path), "rows": count, "found": len(evidence["data"])},
    )
    return Outcome(kind, route, version, "lineage: rolled back", run_dir, path, count)


_ROLE_LINE: Final = re.compile(r"^(system|user|assistant): ?(.*)$")


def split_roles(text: str) -> list[dict[str, str]]:
    """The response log's prompt text (`role: content` lines) as chat messages; a line with
    no role continues the message before it. Text that starts with no role is one user
    message (a completion's prompt)."""
    messages: list[dict[str, str]] = []
    for line in text.split("\n"):
        found = _ROLE_LINE.match(line)
        if found:
            messages.append({"role": found[1], "content": found[2]})
        elif messages:
            messages[-1]["content"] += "\n" + line
        else:
            return [{"role": "user", "content": text}]
    return messages


def counterexample(row: dict[str, Any], version: Any, rollout: Any) -> dict[str, Any] | None:
    """One evidence row as a dataset row awaiting its completion (None: no text was kept)."""
    messages = row.get("messages")
    if not messages and row.get("prompt"):
        messages = split_roles(str(row["prompt"]))
    if not messages:
        return None
    return {
        "messages": [
            {"role": m.get("role"), "content": m.get("content")}
            for m in messages
            if isinstance(m, dict)
        ],
        "meta": {
            "rejected": row.get("answer"),
            "reasons": row.get("reasons", []),
            "source": row.get("source"),
            "request_id": row.get("request_id"),
            "version": version,
            "rollout": rollout,
        },
    }


def export_counterexamples(
    root: Path, route: str, version: Any, rollout: Any, evidence: dict[str, Any]
) -> tuple[Path, int]:
    """Write `<root>/counterexamples/<route>-v<version>-rollout<id>.jsonl` atomically."""
    out = root / "counterexamples" / f"{route}-v{version}-rollout{rollout}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in (counterexample(e, version, rollout) for e in evidence["data"]) if r]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for item in rows:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out, len(rows)
