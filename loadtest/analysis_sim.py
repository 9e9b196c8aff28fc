"""Rollout analysis on synthetic canaries: false rollbacks, and how fast bad versions go.

Every run streams requests to a rollout with 5% of them on the candidate and checks the
signal's test after every request (`gateway.analysis.simulation`). Scenarios (fixed before
any result was seen; the tests' tuning used other rates and effects):

- A/A: both versions the same, each signal of a five-signal SLO (error rate 2%, verifier
  pass 90%, satisfaction 70%, reward mean 1.0 with CV 0.5, judge grade 7 with sd 1.5), each
  at its share alpha/5 of alpha = 0.05: the share of runs with any false rollback within
  2,000 candidate requests;
- broken: verifier pass 0.9 -> 0.3;
- reward -15% (CV 0.5);
- success rate 0.90 -> 0.85;

each with the signal as the rollout's only guardrail (alpha 0.05) and as one of the five
(alpha 0.01). For each: the share of runs that rolled back, and the candidate requests the
runs had served when they did (p10, p50, p90, max; `inf` when fewer than that share
decided).

The reward-hacking alarm (reward significantly up while satisfaction is significantly
down, each at the alarm's alpha 0.05): its false alarms when both are flat (A/A), and how
often and how fast it fires when reward rises 15% while satisfaction falls 0.70 -> 0.60.

    .venv/bin/python -m loadtest.analysis_sim --runs 1000 --json analysis.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from gateway.analysis import simulation as sim
from loadtest.common import machine, machine_line, write_json

ALPHA = 0.05
FAMILY = 5
WEIGHT = 0.05


def _aa(runs: int, seed: int) -> dict[str, Any]:
    """A/A over the five-signal family, each signal at alpha / 5."""
    alpha = ALPHA / FAMILY
    horizon = 2000
    outcomes = {
        "error_rate": sim.pass_fail(0.02, 0.02, alpha=alpha, runs=runs, horizon=horizon,
                                    seed=seed),
        "verifier_pass": sim.pass_fail(0.1, 0.1, alpha=alpha, runs=runs, horizon=horizon,
                                       seed=seed + 1),
        "satisfaction_rate": sim.pass_fail(0.3, 0.3, alpha=alpha, runs=runs, horizon=horizon,
                                           seed=seed + 2),
        "reward_mean": sim.means((1.0, 0.5), (1.0, 0.5), alpha=alpha, runs=runs,
                                 horizon=horizon, seed=seed + 3),
        "judge_grade": sim.means((7.0, 1.5), (7.0, 1.5), alpha=alpha, runs=runs,
                                 horizon=horizon, seed=seed + 4),
    }  # fmt: skip
    any_fired = np.zeros(runs, dtype=bool)
    for outcome in outcomes.values():
        any_fired |= outcome.fired
    return {
        "runs": runs,
        "horizon_canary_requests": horizon,
        "false_rollbacks": float(any_fired.mean()),
        "per_signal": {name: o.rate for name, o in outcomes.items()},
    }


def alarm(runs: int, seed: int, *, hacked: bool) -> sim.Outcome:
    """Reward up and satisfaction down, each at alpha 0.05, both crossed (sticky)."""
    horizon = 2000
    reward = (1.15, 0.5) if hacked else (1.0, 0.5)
    rating = 0.4 if hacked else 0.3
    up = sim.means((1.0, 0.5), reward, alpha=ALPHA, runs=runs, horizon=horizon, seed=seed,
                   higher=True)  # fmt: skip
    down = sim.pass_fail(0.3, rating, alpha=ALPHA, runs=runs, horizon=horizon, seed=seed + 1)
    both = up.fired & down.fired
    return sim.Outcome(both, np.maximum(up.canary_served, down.canary_served))


def _scenario(name: str, runs: int, alpha: float, seed: int) -> sim.Outcome:
    if name == "broken verifier 0.9 -> 0.3":
        return sim.pass_fail(0.1, 0.7, alpha=alpha, runs=runs, horizon=200, seed=seed)
    if name == "reward -15% (CV 0.5)":
        return sim.means((1.0, 0.5), (0.85, 0.425), alpha=alpha, runs=runs, horizon=2000,
                         seed=seed)  # fmt: skip
    if name == "success rate 0.90 -> 0.85":
        return sim.pass_fail(0.1, 0.15, alpha=alpha, runs=runs, horizon=4000, seed=seed)
    raise ValueError(name)


SCENARIOS = {
    # name: (the aim's quantile, the aim in candidate requests, the detection aim)
    "broken verifier 0.9 -> 0.3": (0.9, 50, 0.9),
    "reward -15% (CV 0.5)": (0.9, 200, 0.95),
    "success rate 0.90 -> 0.85": (0.5, 500, 0.95),
}


def main(
    runs: Annotated[int, typer.Option(help="Runs per scenario (the aim asks for >= 500).")] = 1000,
    seed: Annotated[int, typer.Option()] = 20261206,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    """Run every scenario and print the table."""
    console = Console(width=150)
    started = time.perf_counter()
    aa = _aa(runs, seed)
    rows: list[dict[str, Any]] = []
    for i, (name, (q, aim, detect)) in enumerate(SCENARIOS.items()):
        for label, alpha in (("alone", ALPHA), (f"one of {FAMILY}", ALPHA / FAMILY)):
            outcome = _scenario(name, runs, alpha, seed + 10 * (i + 1))
            rows.append(
                {
                    "scenario": name,
                    "slo": label,
                    "alpha": alpha,
                    "rolled_back": outcome.rate,
                    "p10": outcome.quantile(0.1),
                    "p50": outcome.quantile(0.5),
                    "p90": outcome.quantile(0.9),
                    "max": outcome.quantile(1.0),
                    "aim": f"p{int(q * 100)} <= {aim}, detected >= {detect:.0%}",
                    "met": outcome.quantile(q) <= aim and outcome.rate >= detect,
                }
            )
    table = Table(title=f"Rollout analysis, {runs} runs per row, 5% canary, checked every request")
    columns = ("scenario", "SLO", "alpha", "rolled back", "p10", "p50", "p90", "max", "aim", "met")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["scenario"], row["slo"], f"{row['alpha']:.3f}", f"{row['rolled_back']:.1%}",
            f"{row['p10']:.0f}", f"{row['p50']:.0f}", f"{row['p90']:.0f}", f"{row['max']:.0f}",
            row["aim"], "yes" if row["met"] else "no",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"A/A, five signals at alpha/5 each, {aa['horizon_canary_requests']} candidate "
        f"requests: false rollbacks {aa['false_rollbacks']:.1%} of {runs} runs "
        f"(per signal: " + ", ".join(f"{k} {v:.1%}" for k, v in aa["per_signal"].items()) + ")"
    )
    flat = alarm(runs, seed + 100, hacked=False)
    hacked = alarm(runs, seed + 200, hacked=True)
    alarms = {
        "false_alarms": flat.rate,
        "fired": hacked.rate,
        "p50": hacked.quantile(0.5),
        "p90": hacked.quantile(0.9),
    }
    console.print(
        f"Reward-hacking alarm: false alarms {flat.rate:.1%} of {runs} flat runs; reward +15% "
        f"with satisfaction 0.70 -> 0.60: fired in {hacked.rate:.1%}, after p50 "
        f"{alarms['p50']:.0f} / p90 {alarms['p90']:.0f} candidate requests"
    )
    console.print(f"{machine_line()}; {time.perf_counter() - started:.0f} s")
    if json_out is not None:
        write_json(json_out, {"machine": machine(), "aa": aa, "scenarios": rows, "alarm": alarms})


if __name__ == "__main__":
    typer.run(main)
