"""deploy/compose: `docker-compose config` accepts the file with the example environment and
refuses it without its secrets; the services fit together (GPU reservation, LoRA flags, the
adapter store at one path, rules and dashboard mounted); Prometheus' config is valid."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
ADAPTER_ROOT = "/var/lib/lora-gateway/adapters"

Run = Callable[..., subprocess.CompletedProcess[str]]


def mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read-only) of a volume in docker-compose's short or long form."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only", False))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def clean_env() -> dict[str, str]:
    """No variable of the caller's reaches the file: only the env file given."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}


@pytest.fixture(scope="module")
def resolved(docker_compose: str, run: Run) -> dict[str, Any]:
    """The compose file as docker-compose resolves it with .env.example."""
    done = run(
        docker_compose,
        "-f",
        COMPOSE_FILE,
        "--env-file",
        COMPOSE / ".env.example",
        "config",
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_compose_file_is_valid(docker_compose: str, run: Run) -> None:
    checked = run(
        docker_compose,
        "-f",
        COMPOSE_FILE,
        "--env-file",
        COMPOSE / ".env.example",
        "config",
        "--quiet",
        env=clean_env(),
    )
    assert checked.returncode == 0, checked.stderr


def test_the_compose_file_refuses_to_start_without_its_secrets(
    docker_compose: str, run: Run, tmp_path: Path
) -> None:
    incomplete = tmp_path / "incomplete.env"
    lines = (COMPOSE / ".env.example").read_text().splitlines()
    incomplete.write_text("\n".join(x for x in lines if not x.startswith("POSTGRES_PASSWORD=")))
    checked = run(
        docker_compose, "-f", COMPOSE_FILE, "--env-file", incomplete, "config", env=clean_env()
    )
    assert checked.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in checked.stderr


def test_a_broken_compose_file_is_refused(docker_compose: str, run: Run, tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    compose["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = [1]
    compose["services"]["gateway"]["restart_policy"] = "always"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose, sort_keys=False))
    checked = run(
        docker_compose,
        "--project-directory",
        COMPOSE,
        "-f",
        broken,
        "--env-file",
        COMPOSE / ".env.example",
        "config",
        "--quiet",
        env=clean_env(),
    )
    assert checked.returncode != 0
    assert "Unsupported config option for services.gateway: 'restart_policy'" in checked.stderr
    assert "devices.count contains an invalid type" in checked.stderr


def test_the_stack_has_every_service(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {
        "gateway",
        "vllm",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
    }


def test_vllm_gets_a_gpu_and_the_lora_flags(resolved: dict[str, Any]) -> None:
    vllm = resolved["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert device["driver"] == "nvidia"
    command = vllm["command"]
    flags = {a.split("=")[0] for a in command}
    assert {"--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"} <= flags
    assert "--quantization=awq_marlin" in command
    assert "AWQ" in command[0]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    values = dict(a.split("=", 1) for a in command if a.startswith("--") and "=" in a)
    gateway = resolved["services"]["gateway"]["environment"]
    assert gateway["GATEWAY_ENGINE__MAX_LORA_RANK"] == values["--max-lora-rank"]
    assert int(gateway["GATEWAY_MAX_RESIDENT_ADAPTERS"]) <= int(values["--max-cpu-loras"])
    assert gateway["GATEWAY_BASE_MODEL_NAME"] == values["--served-model-name"]
    assert "ports" not in vllm


def test_the_gateway_reaches_vllm_postgres_and_redis(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    gateway = services["gateway"]["environment"]
    assert gateway["GATEWAY_UPSTREAM_DNS"] == "http://vllm:8000"
    assert gateway["GATEWAY_DATABASE_URL"].startswith("postgresql://lora:")
    assert gateway["GATEWAY_DATABASE_URL"].endswith("@postgres:5432/lora_gateway")
    assert gateway["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert len(gateway["GATEWAY_ADMIN_KEY_SHA256"]) == 64
    networks = {name: set(s.get("networks", {})) for name, s in services.items()}
    for peer in ("vllm", "postgres", "redis"):
        assert networks[peer] & networks["gateway"], peer
    # vLLM's unauthenticated API is on a network only the gateway and Prometheus join.
    assert {n for n, nets in networks.items() if nets & networks["vllm"]} == {
        "gateway",
        "vllm",
        "prometheus",
    }


def test_the_adapter_store_is_one_path_in_gateway_and_vllm(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["gateway"]["environment"]["GATEWAY_ADAPTER_ROOT"] == ADAPTER_ROOT
    for name, read_only in (("gateway", False), ("vllm", True)):
        (store,) = [m for m in map(mount, services[name]["volumes"]) if m[1] == ADAPTER_ROOT]
        assert store == (ADAPTER_ROOT, ADAPTER_ROOT, read_only)


def test_mounted_files_exist(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for source, _, _ in map(mount, service.get("volumes", [])):
            if source.startswith(str(ROOT)):
                assert Path(source).exists(), f"{name}: {source}"


def test_the_compose_prometheus_config_is_valid(promtool: str, run: Run) -> None:
    checked = run(promtool, "check", "config", COMPOSE / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert jobs == {"lora-gateway", "vllm"}
