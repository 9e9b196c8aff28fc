"""Every rule file in deploy/prometheus passes `promtool check rules`, its unit tests pass
`promtool test rules`, and rules name only series the gateway exports; a broken rule and a
broken rule test are refused."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted(RULES.glob("*-rules.yml"))
TEST_FILES = sorted(RULES.glob("*-rules.test.yml"))

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_there_are_rules_and_a_unit_test_for_each_file() -> None:
    assert [p.name for p in RULE_FILES] == ["rollout-rules.yml", "serving-rules.yml"]
    assert {p.name.replace(".test", "") for p in TEST_FILES} == {p.name for p in RULE_FILES}


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_rule_files_pass_promtool_check(rules: Path, promtool: str, run: Run) -> None:
    checked = run(promtool, "check", "rules", rules.name, cwd=RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("tests", TEST_FILES, ids=lambda p: p.name)
def test_rule_unit_tests_pass(tests: Path, promtool: str, run: Run) -> None:
    tested = run(promtool, "test", "rules", tests.name, cwd=RULES)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_compose_prometheus_loads_every_rule_file() -> None:
    local = yaml.safe_load((RULES / "prometheus.yml").read_text())
    assert sorted(local["rule_files"]) == [p.name for p in RULE_FILES]
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
    mounted = {v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    assert {f"../prometheus/{p.name}" for p in RULE_FILES} <= mounted


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_rules_name_only_series_the_gateway_exports(
    rules: Path, gateway_metrics: dict[str, set[str]]
) -> None:
    groups = [yaml.safe_load(p.read_text())["groups"] for p in RULE_FILES]
    recorded = {r["record"] for gs in groups for g in gs for r in g["rules"] if "record" in r}
    used: set[str] = set()
    for group in yaml.safe_load(rules.read_text())["groups"]:
        for rule in group["rules"]:
            names = re.findall(r"[A-Za-z_:][\w:]*", rule["expr"])
            used |= {n for n in names if n.startswith("gateway_")}
    unknown = sorted(used - recorded - set(gateway_metrics))
    assert not unknown


def test_a_broken_rule_is_refused(promtool: str, run: Run, tmp_path: Path) -> None:
    rules = yaml.safe_load((RULES / "serving-rules.yml").read_text())
    rule = next(r for r in rules["groups"][0]["rules"] if r.get("alert") == "NoHealthyEngine")
    rule["expr"] = "gateway_upstreams_healthy:count < (1"
    broken = tmp_path / "serving-rules.yml"
    broken.write_text(yaml.safe_dump(rules, sort_keys=False))
    checked = run(promtool, "check", "rules", broken)
    assert checked.returncode != 0
    assert "parse error" in checked.stdout + checked.stderr


def test_a_rule_that_no_longer_does_what_its_test_says_is_refused(
    promtool: str, run: Run, tmp_path: Path
) -> None:
    for path in (RULES / "serving-rules.yml", RULES / "serving-rules.test.yml"):
        shutil.copy(path, tmp_path / path.name)
    rules_file = tmp_path / "serving-rules.yml"
    rules_file.write_text(
        rules_file.read_text().replace(
            "adapter_version:gateway_requests_5xx:ratio_rate5m > 0.05",
            "adapter_version:gateway_requests_5xx:ratio_rate5m > 0.5",
        )
    )
    tested = run(promtool, "test", "rules", "serving-rules.test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "alertname: GatewayErrorRateHigh" in tested.stdout + tested.stderr
