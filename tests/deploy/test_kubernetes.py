"""The Kustomize overlays in deploy/k8s: they render (`kubectl kustomize`), every built-in
kind passes the Kubernetes schemas (kubernetes-validate, strict), the PrometheusRule's groups
pass `promtool check rules`, and the objects fit together the way the gateway needs."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu-demo", "gpu")
ADAPTER_ROOT = "/var/lib/lora-gateway/adapters"
GATEWAY = {"app.kubernetes.io/name": "lora-gateway", "app.kubernetes.io/component": "gateway"}
ENGINE = {"app.kubernetes.io/name": "lora-gateway", "app.kubernetes.io/component": "engine"}

Objects = list[dict[str, Any]]
Validate = Callable[[Objects], subprocess.CompletedProcess[str]]


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    """The one object of that kind and name (generated names carry a hash suffix)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (o["metadata"]["name"] == name or o["metadata"]["name"].startswith(f"{name}-"))
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def is_crd(obj: dict[str, Any]) -> bool:
    """Kinds of the Prometheus Operator: no schema of theirs ships with kubernetes-validate."""
    return str(obj["apiVersion"]).startswith("monitoring.coreos.com/")


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def env(container_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container_spec.get("env", [])}


def config_map(objects: Objects, name: str) -> dict[str, str]:
    data: dict[str, str] = find(objects, "ConfigMap", name)["data"]
    return data


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(objects: Objects, deployment: str) -> dict[str, str]:
    labels: dict[str, str] = find(objects, "Deployment", deployment)["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_the_whole_stack(overlay: str, overlays: dict[str, Objects]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"].split("-")[0]) for o in overlays[overlay]}
    for wanted in [
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("Deployment", "vllm"),
        ("Service", "vllm"),
        ("PersistentVolumeClaim", "adapters"),
        ("NetworkPolicy", "vllm"),
        ("ServiceMonitor", "gateway"),
        ("PrometheusRule", "lora"),
        ("ConfigMap", "base"),
        ("ConfigMap", "gateway"),
    ]:
        assert wanted in kinds, wanted
    assert all(
        o["metadata"].get("namespace", "lora-gateway") == "lora-gateway" for o in overlays[overlay]
    )


@pytest.mark.parametrize("overlay", [*OVERLAYS, "migrate"])
def test_built_in_kinds_pass_the_kubernetes_schemas(
    overlay: str,
    render: Callable[[Path], Objects],
    validate_manifests: Validate,
) -> None:
    directory = K8S / "migrate" if overlay == "migrate" else K8S / "overlays" / overlay
    objects = [o for o in render(directory) if not is_crd(o)]
    checked = validate_manifests(objects)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A kind without a schema is only a warning: there must be none besides the CRDs.
    assert "WARN" not in checked.stdout, checked.stdout


def test_a_broken_manifest_is_refused(
    overlays: dict[str, Objects], validate_manifests: Validate
) -> None:
    deployment = find(overlays["gpu"], "Deployment", "gateway")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    unknown_field = copy.deepcopy(deployment)
    probe = container(unknown_field, "gateway").pop("readinessProbe")
    container(unknown_field, "gateway")["readinesProbe"] = probe
    checked = validate_manifests([wrong_type, unknown_field])
    assert checked.returncode != 0
    errors = [line for line in checked.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2, checked.stdout
    assert "spec.replicas: 'two' is not of type 'integer'" in errors[0]
    assert "'readinesProbe' was unexpected" in errors[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_prometheusrule_groups_pass_promtool(
    overlay: str,
    overlays: dict[str, Objects],
    promtool: str,
    run: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    rule = find(overlays[overlay], "PrometheusRule", "lora-gateway")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = run(promtool, "check", "rules", rules_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The same groups as deploy/prometheus's rule files, nothing dropped or added.
    files = sorted((ROOT / "deploy" / "prometheus").glob("*-rules.yml"))
    groups = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert rule["spec"]["groups"] == groups


def test_the_prometheusrule_manifest_is_up_to_date(
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    checked = run(sys.executable, ROOT / "deploy" / "prometheus" / "prometheusrule.py", "--check")
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_servicemonitor_scrapes_the_gateway_service(
    overlay: str, overlays: dict[str, Objects]
) -> None:
    objects = overlays[overlay]
    monitor = find(objects, "ServiceMonitor", "gateway")
    service = find(objects, "Service", "gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_gateways_health_routes(overlay: str, overlays: dict[str, Objects]) -> None:
    from gateway.api.health import router

    served = {getattr(route, "path", None) for route in router.routes}
    gateway = container(find(overlays[overlay], "Deployment", "gateway"), "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= served
    port_names = {p["name"] for p in gateway["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert gateway[probe]["httpGet"]["port"] in port_names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_finds_vllm_replicas_through_the_headless_service(
    overlay: str, overlays: dict[str, Objects]
) -> None:
    objects = overlays[overlay]
    headless = find(objects, "Service", "vllm-headless")
    assert headless["spec"]["clusterIP"] == "None"
    vllm = find(objects, "Deployment", "vllm")
    assert selects(headless["spec"]["selector"], vllm["spec"]["template"]["metadata"]["labels"])
    assert {p["port"] for p in headless["spec"]["ports"]} == {8000}
    assert container(vllm, "vllm")["ports"][0]["containerPort"] == 8000
    variables = env(container(find(objects, "Deployment", "gateway"), "gateway"))
    names = list(variables)
    assert variables["GATEWAY_UPSTREAM_DNS"]["value"] == (
        "http://vllm-headless.$(POD_NAMESPACE).svc.cluster.local:8000"
    )
    # $(VAR) is expanded only from variables defined earlier in the list.
    assert names.index("POD_NAMESPACE") < names.index("GATEWAY_UPSTREAM_DNS")
    assert variables["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "GATEWAY_UPSTREAM_URLS" not in variables


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateway_pods_reach_the_engines(overlay: str, overlays: dict[str, Objects]) -> None:
    objects = overlays[overlay]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    engine_labels = pod_labels(objects, "vllm")
    gateway_labels = pod_labels(objects, "gateway")
    assert selects(ENGINE, engine_labels) and selects(GATEWAY, gateway_labels)
    (policy,) = [
        p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], engine_labels)
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert selects(peer["podSelector"]["matchLabels"], gateway_labels)
    assert not selects(peer["podSelector"]["matchLabels"], engine_labels)
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_adapter_store_is_mounted_at_the_same_path_everywhere(
    overlay: str, overlays: dict[str, Objects]
) -> None:
    objects = overlays[overlay]
    claim = find(objects, "PersistentVolumeClaim", "adapters")
    expected_mode = "ReadWriteOnce" if overlay == "cpu-demo" else "ReadWriteMany"
    assert claim["spec"]["accessModes"] == [expected_mode]
    assert config_map(objects, "gateway-env")["GATEWAY_ADAPTER_ROOT"] == ADAPTER_ROOT
    for name in ("gateway", "vllm"):
        deployment = find(objects, "Deployment", name)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [
            m
            for m in container(deployment, name)["volumeMounts"]
            if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == "adapters"
        ]
        assert mount["mountPath"] == ADAPTER_ROOT
        assert mount.get("readOnly", False) == (name == "vllm")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_knows_the_engines_lora_limits(
    overlay: str, overlays: dict[str, Objects]
) -> None:
    objects = overlays[overlay]
    args = container(find(objects, "Deployment", "vllm"), "vllm")["args"]
    flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    settings = config_map(objects, "gateway-env")
    assert settings["GATEWAY_ENGINE__MAX_LORA_RANK"] == flags["--max-lora-rank"]
    # The ranks vLLM accepts (vllm/config/lora.py).
    assert int(flags["--max-lora-rank"]) in {1, 8, 16, 32, 64, 128, 256, 320, 512}
    assert int(settings["GATEWAY_MAX_RESIDENT_ADAPTERS"]) <= int(flags["--max-cpu-loras"])
    assert int(flags["--max-loras"]) <= int(flags["--max-cpu-loras"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_urls_and_keys_come_from_secrets(overlay: str, overlays: dict[str, Objects]) -> None:
    variables = env(container(find(overlays[overlay], "Deployment", "gateway"), "gateway"))
    for name in (
        "GATEWAY_DATABASE_URL",
        "GATEWAY_REDIS_URL",
        "GATEWAY_ADMIN_KEY_SHA256",
        "GATEWAY_TENANT_KEYS",
    ):
        reference = variables[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"].startswith("gateway-secrets"), name
        assert "value" not in variables[name]


def test_the_gateway_accepts_the_cpu_demo_settings(
    overlays: dict[str, Objects], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered environment, read by the gateway's own settings (the demo Secret too)."""
    from gateway.config import Settings

    objects = overlays["cpu-demo"]
    gateway = container(find(objects, "Deployment", "gateway"), "gateway")
    secret = find(objects, "Secret", "gateway-secrets")
    values: dict[str, str] = dict(config_map(objects, "gateway-env"))
    for name, variable in env(gateway).items():
        if "value" in variable:
            values[name] = variable["value"].replace("$(POD_NAMESPACE)", "lora-gateway")
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            key = variable["valueFrom"]["secretKeyRef"]["key"]
            values[name] = base64.b64decode(secret["data"][key]).decode()
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        if name.startswith("GATEWAY_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert not settings.managed_engine
    assert str(settings.resolved_adapter_root) == ADAPTER_ROOT
    assert settings.base_model_name == "smollm2-135m-instruct"
    assert settings.admin_key_sha256 == hashlib.sha256(b"demo-admin-key").hexdigest()
    assert [k.key_sha256 for k in settings.tenant_keys] == [
        hashlib.sha256(b"demo-tenant-key").hexdigest()
    ]
    assert str(settings.resolved_database_url).startswith("postgresql://")
    # The base model's config.json the gateway checks adapters against.
    config = json.loads(config_map(objects, "base-model")["config.json"])
    assert (config["hidden_size"], config["num_hidden_layers"]) == (576, 30)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged(
    overlay: str, overlays: dict[str, Objects], render: Callable[[Path], Objects]
) -> None:
    workloads = [o for o in overlays[overlay] if o["kind"] == "Deployment"]
    workloads += render(K8S / "migrate")
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        for spec in pod["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "resources" in spec, name
    gateway = container(find(overlays[overlay], "Deployment", "gateway"), "gateway")
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_gpu_overlay_serves_an_awq_base_with_lora_on_gpus(overlays: dict[str, Objects]) -> None:
    objects = overlays["gpu"]
    vllm = find(objects, "Deployment", "vllm")
    engine = container(vllm, "vllm")
    assert engine["image"].startswith("vllm/vllm-openai:")
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = engine["args"]
    flags = {a.split("=")[0] for a in args}
    assert {"--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"} <= flags
    assert "--quantization=awq_marlin" in args
    assert "AWQ" in args[0]
    served = next(a for a in args if a.startswith("--served-model-name=")).split("=", 1)[1]
    assert config_map(objects, "gateway-env")["GATEWAY_BASE_MODEL_NAME"] == served
    pod = vllm["spec"]["template"]["spec"]
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in env(engine)
    kinds = {o["kind"] for o in objects}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    hpa = find(objects, "HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert "replicas" not in find(objects, "Deployment", "gateway")["spec"]


def test_the_cpu_demo_runs_one_small_replica_each_on_the_cpu_image(
    overlays: dict[str, Objects],
) -> None:
    objects = overlays["cpu-demo"]
    for name in ("gateway", "vllm", "postgres", "redis"):
        assert find(objects, "Deployment", name)["spec"]["replicas"] == 1, name
    engine = container(find(objects, "Deployment", "vllm"), "vllm")
    assert engine["image"].startswith("lora-gateway-vllm-cpu:")
    assert "nvidia.com/gpu" not in engine["resources"]["limits"]
    flags = {a.split("=")[0] for a in engine["args"]}
    assert {"--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"} <= flags
    assert not {o["kind"] for o in objects} & {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    # The CPU image serves the base under the name the gateway gives it.
    image = (ROOT / "deploy" / "docker" / "vllm-cpu.Dockerfile").read_text()
    served = re.search(r"SERVED_MODEL_NAME=(\S+)", image)
    assert served is not None
    assert config_map(objects, "gateway-env")["GATEWAY_BASE_MODEL_NAME"] == served.group(1)
