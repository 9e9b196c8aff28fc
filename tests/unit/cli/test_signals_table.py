"""`lora-gateway rollouts status` shows each quality signal's variants side by side."""

from __future__ import annotations

from rich.console import Console

from gateway.cli.rollouts import _signals_table


def test_signals_are_shown_per_variant_with_mean_spread_count_and_pass_rate() -> None:
    rollout = {
        "signals": [
            {"variant": "stable", "signal": "shouted", "count": 40, "mean": 0.05, "sd": 0.22,
             "passes": 2, "fails": 38},
            {"variant": "shadow", "signal": "shouted", "count": 39, "mean": 0.95, "sd": 0.22,
             "passes": 37, "fails": 2},
            {"variant": "paired", "signal": "shouted", "count": 39, "mean": 0.9, "sd": 0.3,
             "passes": 0, "fails": 0},
            {"variant": "canary", "signal": "satisfaction", "count": 1, "mean": 1.0, "sd": None,
             "passes": 1, "fails": 0},
        ]
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_signals_table(rollout))
    lines = console.export_text().splitlines()
    shouted = next(line for line in lines if line.lstrip("│ ").startswith("shouted"))
    cells = [c.strip() for c in shouted.split("│") if c.strip()]
    assert cells == [
        "shouted",
        "0.05 ± 0.22 (n=40), 5% pass",
        "-",
        "0.95 ± 0.22 (n=39), 95% pass",
        "0.9 ± 0.3 (n=39)",
    ]
    satisfaction = next(line for line in lines if "satisfaction" in line)
    assert "1 (n=1), 100% pass" in satisfaction
