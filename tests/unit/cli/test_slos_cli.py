"""`lora-gateway slos show` and `slos apply` against the real admin API (a gateway on a
loopback socket, the fake engine behind it)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner, Result

from gateway.cli import app as cli

SLOS = """\
defaults:
  signals:
    - {signal: error_rate, critical: true, margin: 0.02}
routes:
  pirate:
    signals:
      - {signal: error_rate, critical: true, margin: 0.02}
      - {signal: verifier_pass, scorer: pirate_voice, margin: -0.1}
"""
BAD = """\
routes:
  pirate:
    signals:
      - {signal: telepathy, margin: 0}
      - {signal: verifier_pass, scorer: pirate_voice, margin: 0.1}
"""


def slos(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["slos", *args, "--url", url], env={"COLUMNS": "200"})


def test_apply_checks_stores_and_show_prints_the_file_in_use(
    gateway_url: str, tmp_path: Path
) -> None:
    missing = slos(gateway_url, "show")
    assert missing.exit_code == 1 and "No SLO file is in use. (HTTP 404)" in missing.output

    path = tmp_path / "slos.yaml"
    path.write_text(SLOS, encoding="utf-8")
    checked = slos(gateway_url, "apply", str(path), "--dry-run")
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith(
        "checked: the SLO file is valid (1 routes, defaults for the others); nothing was changed"
    )
    assert slos(gateway_url, "show").exit_code == 1

    applied = slos(gateway_url, "apply", str(path), "--reason", "first SLOs")
    assert applied.exit_code == 0, applied.output
    assert applied.output.startswith("applied SLO file 1 (1 routes, defaults for the others), by")

    shown = slos(gateway_url, "show")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("in use: SLO file 1")
    assert "verifier_pass:pirate_voice" in shown.output and "yes" in shown.output
    assert slos(gateway_url, "show", "--source").output == SLOS
    payload = json.loads(slos(gateway_url, "show", "--json").output)
    assert payload["routes"]["pirate"][1] == {
        "name": "verifier_pass:pirate_voice",
        "critical": False,
    }


def test_a_bad_or_missing_file_changes_nothing(gateway_url: str, tmp_path: Path) -> None:
    demo = slos(gateway_url, "apply", "demo", "--json")
    assert demo.exit_code == 0, demo.output
    assert list(json.loads(demo.output)["routes"]) == ["pirate", "french", "shout", "cowboy"]

    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    refused = slos(gateway_url, "apply", str(path))
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert "invalid SLO file: routes.pirate.signals[0].signal: unknown signal kind" in message
    assert "routes.pirate.signals[1].margin: verifier_pass is higher-is-better" in message
    assert "(HTTP 400)" in message

    unreadable = slos(gateway_url, "apply", str(tmp_path / "nowhere.yaml"))
    assert unreadable.exit_code == 1 and "cannot read" in unreadable.output
    assert json.loads(slos(gateway_url, "show", "--json").output)["id"] == 1
