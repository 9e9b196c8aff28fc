"""`lora-gateway rollouts status` and `rollouts explain` show a verdict signal by signal."""

from __future__ import annotations

import math

from rich.console import Console

from gateway.cli.verdicts import analysis_renderables, history_renderables

VERDICT = {
    "id": 7,
    "at": "2026-12-06T19:24:13.271000Z",
    "stage": "canary",
    "step": 0,
    "outcome": "fail",
    "action": "rollback",
    "acted": True,
    "dry_run": False,
    "reason": "failing: verifier_pass:pirate_voice",
    "leader": "vm:123",
    "signals": [
        {"name": "verifier_pass:pirate_voice", "signal": "verifier_pass", "critical": True,
         "dry_run": False, "decision": "fail", "reason": "worse than stable: e-value 51.2 reached 1/alpha = 40",
         "candidate_n": 34, "stable_n": 36, "candidate_value": 0.0, "stable_value": 1.0,
         "difference": -1.0, "interval": [-1.0, -0.584], "margin": -0.5, "alpha": 0.025,
         "log_e": math.log(51.2), "log_e_better": 0.0, "threshold": math.log(40), "paired": False},
        {"name": "error_rate", "signal": "error_rate", "critical": True, "dry_run": True,
         "decision": "pass", "reason": "non-inferior", "candidate_n": 34, "stable_n": 36,
         "candidate_value": 0.0, "stable_value": 0.0, "difference": 0.0,
         "interval": [-0.2, 0.19], "margin": 0.2, "alpha": 0.025, "log_e": 0.0,
         "log_e_better": 0.0, "threshold": math.log(40), "paired": False},
    ],
}  # fmt: skip


def text(*renderables: object) -> str:
    console = Console(width=260, record=True)
    for item in renderables:
        console.print(item)
    return console.export_text()


def test_the_newest_verdict_shows_each_signal_s_evidence_and_decision() -> None:
    analysis = {"phase": "Failed", "verdict": VERDICT}
    out = text(*analysis_renderables(analysis))
    assert "analysis: Failed" in out
    assert "verdict 7 at 2026-12-06 19:24:13 (canary step 1): fail -> rollback (done)" in out
    row = next(line for line in out.splitlines() if "pirate_voice (critical)" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:8] == [
        "verifier_pass:pirate_voice (critical)", "fail", "34 / 36", "0", "1",
        "-1 [-1, -0.584]", "-0.5", "51.2 / 40",
    ]  # fmt: skip
    assert "error_rate (critical) (dry run)" in out


def test_a_rollout_without_verdicts_says_why() -> None:
    out = text(*analysis_renderables({"phase": "Running", "verdict": None}))
    assert "no verdict yet" in out
    assert "no verdicts yet" in text(*history_renderables([]))


def test_the_history_is_printed_oldest_first() -> None:
    newer = {**VERDICT, "id": 8, "outcome": "wait", "action": "none"}
    out = text(*history_renderables([newer, VERDICT]))
    assert out.index("verdict 7 at") < out.index("verdict 8 at")
