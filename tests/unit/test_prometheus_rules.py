"""The Prometheus rules in deploy/prometheus: valid (`promtool check rules`), doing what
their unit tests say (`promtool test rules`), and naming only metrics the gateway exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from gateway.metrics import Metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, (
        "promtool comes with Debian's prometheus package (scripts/ensure_prometheus.sh)"
    )
    return subprocess.run([tool, *args], cwd=RULES, capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid_and_pass_their_unit_tests() -> None:
    checked = promtool("check", "rules", "rollout-rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rollout-rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rules_name_only_metrics_the_gateway_exports() -> None:
    metrics = Metrics()
    # Touch a labelled child of each family so every sample name appears in the exposition.
    exported = set(re.findall(r"^# TYPE (\w+)", generate_latest(metrics.registry).decode(), re.M))
    names = set()
    for sample in ("_total", "_bucket", "_sum", "_count", "_created"):
        names |= {f"{n}{sample}" for n in exported}
    names |= exported
    rules = yaml.safe_load((RULES / "rollout-rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\b(gateway_\w+)", rule["expr"]))
    unknown = {n for n in used - recorded if n not in names}
    assert not unknown, unknown
