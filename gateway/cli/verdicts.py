"""How `lora-gateway rollouts status` and `rollouts explain` show the analysis's verdicts:
per signal, the samples of each variant, the estimates, candidate minus stable with its
interval, the margin, the evidence against the threshold, the decision and why."""

from __future__ import annotations

import math
from typing import Any

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.cli.client import Json, when

DECISION_STYLES = {"pass": "green", "fail": "bold red", "wait": "yellow", "n/a": "dim"}
PHASE_STYLES = {"Successful": "green", "Failed": "bold red", "Inconclusive": "yellow"}


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # infinities are stored as text
        return value
    return f"{value:.{digits}g}"


def _evidence(s: Json) -> str:
    """The e-value against 1/alpha (how far the test of `worse` has come)."""
    log_e, threshold = s.get("log_e"), s.get("threshold")
    if not isinstance(log_e, int | float) or not isinstance(threshold, int | float):
        return "-"
    e = "≥1e300" if log_e > 690 else f"{math.exp(log_e):.3g}"
    return f"{e} / {math.exp(threshold):.3g}"


def signals_table(verdict: Json, title: str = "signals") -> Table:
    """A verdict's signals as one table."""
    table = Table(
        "signal",
        "decision",
        "n (cand / stable)",
        "candidate",
        "stable",
        "difference [interval]",
        "margin",
        "e-value / 1/alpha",
        "why",
        title=title,
    )
    for s in verdict["signals"]:
        name = s["name"] + (" (critical)" if s.get("critical") else "")
        name += " (dry run)" if s.get("dry_run") else ""
        decision = Text(s["decision"], style=DECISION_STYLES.get(s["decision"], ""))
        interval = s.get("interval")
        difference = _num(s.get("difference"))
        if interval:
            difference += f" [{_num(interval[0])}, {_num(interval[1])}]"
        n = (
            "pairs " + str(s["candidate_n"])
            if s.get("paired")
            else (f"{s['candidate_n']} / {s['stable_n']}")
        )
        table.add_row(
            escape(name),
            decision,
            n,
            _num(s.get("candidate_value")),
            _num(s.get("stable_value")),
            difference,
            _num(s.get("margin")),
            _evidence(s),
            escape(s.get("reason", "")),
        )
    return table


def verdict_line(verdict: Json) -> Text:
    """One line: when, where, the outcome, what it asked for and whether it was done."""
    line = Text(f"verdict {verdict['id']} at {when(verdict['at'])} ({verdict['stage']}")
    if verdict["stage"] == "canary":
        line.append(f" step {verdict['step'] + 1}")
    line.append("): ")
    line.append(verdict["outcome"], style=DECISION_STYLES.get(verdict["outcome"], ""))
    action = verdict["action"]
    if action != "none":
        done = "done" if verdict["acted"] else "not done"
        line.append(f" -> {action} ({done}{', dry run' if verdict['dry_run'] else ''})")
    line.append(f"; {verdict['reason']}")
    return line


def analysis_renderables(analysis: Json) -> list[RenderableType]:
    """The `analysis` answer of a rollout: its phase and newest verdict."""
    phase = Text("analysis: ")
    phase.append(analysis["phase"], style=PHASE_STYLES.get(analysis["phase"], ""))
    verdict = analysis.get("verdict")
    if verdict is None:
        phase.append(" (no verdict yet: the route has no SLOs, or no look was taken)")
        return [phase]
    return [phase, verdict_line(verdict), signals_table(verdict)]


def history_renderables(verdicts: list[Json]) -> list[RenderableType]:
    """Verdicts oldest first, each with its table."""
    out: list[RenderableType] = []
    for verdict in reversed(verdicts):
        out.append(verdict_line(verdict))
        out.append(signals_table(verdict, title=f"verdict {verdict['id']}"))
    if not out:
        out.append("no verdicts yet")
    return out
