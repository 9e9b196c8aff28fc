"""The pipeline's steps: read a spec's data, train (or find the run already trained), stage
the files on the gateway, evaluate, and release (make stable, or start a rollout).

A run lives in `<output>/<name>/<fingerprint[:16]>/`: the fingerprint hashes everything that
determines the weights (the rows, the training settings, the base model's weights), so an
unchanged spec finds its run and trains nothing. Staging copies peft's files under the
gateway's adapter root and registers them without serving them; the gateway answers the same
files with the same version, so a re-run changes nothing there either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from adapters.client import GatewayClient, GatewayError
from adapters.data import Dataset, read_dataset, split_held_out
from adapters.lineage import Lineage
from adapters.spec import LoadedSpec, SpecError, missing_files
from adapters.train import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MANIFEST,
    Example,
    StepCallback,
    dataset_sha256,
    read_manifest,
    train_lora,
)
from gateway.registry.validation import content_sha256

STAGED_FILES: Final = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST)
_WEIGHT_SUFFIXES: Final = (".safetensors", ".bin")


@dataclass(frozen=True)
class PreparedData:
    """A spec's rows: what trains, what is held out, and each file's lineage."""

    training: tuple[Example, ...]
    held_out: tuple[Example, ...]
    files: tuple[dict[str, Any], ...]


def prepare_data(loaded: LoadedSpec) -> PreparedData:
    """Read every file the spec names; `SpecError` lists every problem (file and line)."""
    problems = missing_files(loaded)
    if problems:
        raise SpecError(problems)
    spec = loaded.spec
    datasets: list[Dataset] = []
    for item in [*spec.data.train, *spec.data.replay]:
        try:
            datasets.append(read_dataset(loaded.path(item)))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    # The evaluation files are read now too, so a bad line stops the run before training.
    evaluation = spec.evaluation
    named = [evaluation.golden, *evaluation.slices.values(), evaluation.general]
    for extra in named:
        if extra is not None:
            try:
                read_dataset(loaded.path(extra))
            except SpecError as exc:
                problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    task_rows = [row for d in datasets[: len(spec.data.train)] for row in d.rows]
    replay = [row for d in datasets[len(spec.data.train) :] for row in d.rows]
    held = spec.evaluation.held_out
    if held.path is not None:
        held_rows = list(read_dataset(loaded.path(held.path)).rows)
    else:
        task_rows, held_rows = split_held_out(task_rows, held.share or 0.2, spec.training.seed)
    files = tuple(d.lineage(loaded.root) for d in datasets)
    return PreparedData(tuple(task_rows + replay), tuple(held_rows), files)


def base_weights_sha256(base_dir: Path) -> str:
    """sha256 over the base model's weight files (name and content, in name order)."""
    outer = hashlib.sha256()
    found = sorted(p for p in base_dir.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if not found:
        raise SpecError([f"{base_dir}: no weight files (*.safetensors) in the base model"])
    for path in found:
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                inner.update(block)
        outer.update(f"{path.name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def code_version() -> str:
    """The package version and, in a git checkout, the commit (`0.1.0+g1a2b3c4[-dirty]`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("lora-gateway")
    except PackageNotFoundError:
        number = "0"
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return number
    return f"{number}+g{commit}" if commit else number


def run_fingerprint(loaded: LoadedSpec, data: PreparedData, base_sha256: str) -> str:
    """What determines the weights: the rows, the training settings and the base's weights."""
    config = loaded.spec.train_config(len(data.training))
    payload = json.dumps(
        {
            "rows": dataset_sha256(data.training),
            "config": config.to_dict(),
            "base_model": loaded.spec.base_model.id,
            "base_sha256": base_sha256,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def train_run(
    loaded: LoadedSpec,
    data: PreparedData,
    base_dir: Path,
    *,
    on_step: StepCallback | None = None,
) -> tuple[Path, bool]:
    """The run directory for this spec and data: (path, whether it was trained now)."""
    spec = loaded.spec
    base_sha = base_weights_sha256(base_dir)
    fingerprint = run_fingerprint(loaded, data, base_sha)
    out_dir = loaded.output / fingerprint[:16]
    manifest = read_manifest(out_dir)
    if manifest is not None and manifest.get("run_fingerprint") == fingerprint:
        return out_dir, False
    config = spec.train_config(len(data.training))
    lineage = {
        "run_fingerprint": fingerprint,
        "base_model_sha256": base_sha,
        "datasets": list(data.files),
        "training_rows": len(data.training),
        "held_out_rows": len(data.held_out),
        "spec": {
            "file": loaded.file.name,
            "sha256": hashlib.sha256(loaded.text.encode()).hexdigest(),
            "content": yaml.safe_load(loaded.text),
        },
        "code_version": code_version(),
    }
    train_lora(
        base_dir,
        list(data.training),
        out_dir,
        config,
        name=spec.name,
        on_step=on_step,
        lineage=lineage,
        base_model_id=spec.base_model.id,
    )
    return out_dir, True


def stage(run_dir: Path, adapter_root: Path, name: str) -> tuple[str, str]:
    """Copy the run's files to `<adapter_root>/<name>/<sha[:16]>/` (atomically, once);
    return (the path relative to the root, the content sha256 the gateway computes)."""
    sha = content_sha256(run_dir)
    relative = f"{name}/{sha[:16]}"
    target = adapter_root / relative
    try:
        if content_sha256(target) == sha:
            return relative, sha
    except OSError:
        pass  # not staged yet, or damaged: stage it (again)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for part in STAGED_FILES:
            shutil.copy2(run_dir / part, tmp / part)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return relative, sha


def register(
    client: GatewayClient, run_dir: Path, adapter_root: Path, name: str, reason: str
) -> tuple[dict[str, Any], bool]:
    """Stage the run's files and register them unserved: (the version, whether it is new).
    A refusal raises `GatewayError` with the gateway's message."""
    relative, sha = stage(run_dir, adapter_root, name)
    manifest = read_manifest(run_dir) or {}
    summary = {
        key: manifest[key]
        for key in (
            "base_model",
            "base_model_sha256",
            "datasets",
            "training",
            "run_fingerprint",
            "code_version",
            "created_at",
            "artifact",
            "final_loss",
        )
        if key in manifest
    }
    body = {
        "name": name,
        "path": relative,
        "sha256": sha,
        "base_model": manifest.get("base_model"),
        "manifest": summary,
        "serve_first": False,
        "reason": reason,
    }
    return client.register(body)


def now() -> str:
    """UTC now, ISO-8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def lineage_of(run_dir: Path) -> Lineage:
    """The run's lineage record (created on first use)."""
    return Lineage(run_dir / "lineage.json")


def ensure_route_documents(client: GatewayClient, loaded: LoadedSpec) -> list[str]:
    """Put the spec's SLO and verifiers on its route in the gateway's SLO file and scorer
    configuration (other routes untouched); return what changed."""
    spec = loaded.spec
    changed = []
    wanted: list[tuple[str, dict[str, Any] | None]] = [("slos", spec.rollout.slo)]
    if spec.rollout.scorers and spec.task.verifiers:
        scorers = [
            v.model_dump(mode="json", exclude_none=True, by_alias=True) for v in spec.task.verifiers
        ]
        wanted.append(("scorers", {"sample_rate": spec.rollout.sample_rate, "scorers": scorers}))
    for kind, entry in wanted:
        if entry is None:
            continue
        source = client.document(kind)
        document = (yaml.safe_load(source) if source else None) or {}
        if not isinstance(document, dict):
            raise GatewayError(f"the gateway's {kind} document is not a mapping")
        routes = document.setdefault("routes", {})
        if routes.get(spec.name) == entry:
            continue
        routes[spec.name] = entry
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        client.put_document(kind, text, reason=f"adapters pipeline: {spec.name}")
        changed.append(kind)
    return changed
