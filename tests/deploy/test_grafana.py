"""The Grafana dashboard (deploy/grafana/lora-gateway.json): every PromQL expression parses
(`promtool check rules` on a rules file holding each one as a recording rule, Grafana's
variables substituted first), names only series and labels the gateway exports, and the
dashboard covers what operators watch; its provisioning matches deploy/compose."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "lora-gateway.json"

Run = Callable[..., subprocess.CompletedProcess[str]]

# Grafana's built-in interval variables, and a stand-in for the dashboard's own ones (which
# appear inside regex matchers such as `adapter=~"$adapter"`).
BUILT_IN = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
# Series selectors: a metric name, then optional matchers.
SELECTOR = re.compile(r"\b(gateway_\w+)\s*(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
# Labels every scraped series carries besides its own.
TARGET_LABELS = {"instance", "job"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(a name for the rule, the expression) for every query of every panel."""
    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            found.append((f"dashboard:panel_{panel['id']}_{target['refId']}", target["expr"]))
    return found


def substituted(expr: str) -> str:
    for name, value in BUILT_IN.items():
        expr = expr.replace(name, value)
    return VARIABLE.sub("placeholder", expr)


def rules_file(exprs: list[tuple[str, str]], path: Path) -> Path:
    rules = [{"record": name, "expr": substituted(expr)} for name, expr in exprs]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "lora-gateway"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "adapter", "route"} <= variables
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_every_dashboard_expression_parses(promtool: str, run: Run, tmp_path: Path) -> None:
    exprs = expressions(dashboard())
    assert len(exprs) > 30
    checked = run(promtool, "check", "rules", rules_file(exprs, tmp_path / "dashboard.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_a_broken_dashboard_expression_is_refused(promtool: str, run: Run, tmp_path: Path) -> None:
    exprs = expressions(dashboard())
    name, expr = exprs[0]
    exprs[0] = (name, expr.replace("))", ")", 1))
    checked = run(promtool, "check", "rules", rules_file(exprs, tmp_path / "dashboard.yml"))
    assert checked.returncode != 0
    assert name in checked.stdout + checked.stderr


def test_the_dashboard_names_only_series_and_labels_the_gateway_exports(
    gateway_metrics: dict[str, set[str]],
) -> None:
    unknown = []
    for _, expr in expressions(dashboard()):
        for metric, matchers in SELECTOR.findall(expr):
            if metric not in gateway_metrics:
                unknown.append(metric)
                continue
            labels = set(MATCHER_LABEL.findall(matchers or ""))
            wrong = labels - gateway_metrics[metric] - TARGET_LABELS
            if wrong:
                unknown.append(f"{metric}{sorted(wrong)}")
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            grouped = {label.strip() for label in grouping.split(",")}
            names = {m for m, _ in SELECTOR.findall(expr)}
            known = set().union(*(gateway_metrics.get(n, set()) for n in names)) | TARGET_LABELS
            if grouped - known:
                unknown.append(f"by {sorted(grouped - known)} in {expr}")
    assert not unknown


def test_the_dashboard_covers_traffic_latency_rollouts_quality_residency_hooks_upstreams() -> None:
    used = {m for _, e in expressions(dashboard()) for m, _ in SELECTOR.findall(e)}
    for series in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_rollout_stage",
        "gateway_rollout_canary_weight_percent",
        "gateway_rollout_requests_total",
        "gateway_quality_scores_total",
        "gateway_feedback_total",
        "gateway_adapters_resident",
        "gateway_adapter_evictions_total",
        "gateway_hook_deliveries_total",
        "gateway_upstream_healthy",
        "gateway_upstream_ejections_total",
        "gateway_upstream_retries_total",
    ):
        assert series in used, series
    per_version = [
        e
        for _, e in expressions(dashboard())
        if "time_to_first_token" in e or "request_duration" in e
    ]
    assert per_version and all("adapter, version" in e for e in per_version)


def test_grafana_provisioning_matches_the_compose_file() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "lora-gateway.yml").read_text()
    )
    (provider,) = providers["providers"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["../grafana/lora-gateway.json"].startswith(provider["options"]["path"] + "/")
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
