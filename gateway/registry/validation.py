"""Checks an adapter directory must pass before any engine sees it.

vLLM answers a rank above `--max-lora-rank` or an adapter trained on another base model
with a 500 (a shape error) at load time; here both are refused up front, from the files
alone: the safetensors header gives every LoRA tensor's shape without reading the weights.
Paths are confined to the adapter root: absolute paths, `..` and symlinks that lead out
are refused, so a registration can never make the gateway read an arbitrary file.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.catalog import ADAPTER_NAME
from gateway.errors import InvalidRequest
from gateway.registry.store import VersionSpec

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors",)
# The peft files that make an adapter what it is; the manifest beside them is lineage only.
CONTENT_FILES = (CONFIG_FILE, *WEIGHT_FILES)
MAX_HEADER_BYTES = 16 * 1024 * 1024
# Names clients use for something other than an adapter.
RESERVED_NAMES = frozenset({"auto"})
_TENSOR = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter must fit: the base's layer count and each projection's (in, out)."""

    name: str
    num_layers: int
    shapes: dict[str, tuple[int, int]]

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> BaseModelInfo:
        """From a Llama-family `config.json` (q/k/v/o and gate/up/down projections)."""
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads", heads))
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
        return cls(
            name=name,
            num_layers=int(config["num_hidden_layers"]),
            shapes={
                "q_proj": (hidden, heads * head_dim),
                "k_proj": (hidden, kv_heads * head_dim),
                "v_proj": (hidden, kv_heads * head_dim),
                "o_proj": (heads * head_dim, hidden),
                "gate_proj": (hidden, inter),
                "up_proj": (hidden, inter),
                "down_proj": (inter, hidden),
            },
        )

    @classmethod
    def from_model_dir(cls, name: str, model_dir: Path) -> BaseModelInfo:
        return cls.from_config(name, json.loads((model_dir / "config.json").read_text()))


@dataclass(frozen=True)
class ServedBase:
    """The base model adapters must fit: its names and its shapes."""

    served_name: str
    model_id: str
    info: BaseModelInfo | None

    def accepts(self, named: str | None) -> bool:
        """Whether an adapter naming `named` as its base fits (local paths are not names)."""
        if not named or named.startswith(("/", ".", "~")):
            return True
        return named.lower() in {self.served_name.lower(), self.model_id.lower()}


@dataclass(frozen=True)
class ValidatedAdapter:
    """An adapter directory that passed every check, and what it says about itself."""

    path: Path
    relative: str
    sha256: str
    rank: int
    target_modules: list[str]
    # What `adapter_config.json` names as its base (`base_model_name_or_path`), if anything.
    base_model: str | None = None


def confine(root: Path, relative: str) -> Path:
    """`root / relative` resolved, refusing anything that leads outside `root`."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or relative.startswith("~"):
        raise InvalidRequest("path must be relative to the adapter root", param="path")
    if ".." in pure.parts:
        raise InvalidRequest("path must not contain '..'", param="path")
    real_root = root.resolve()
    try:
        resolved = (real_root / pure).resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise InvalidRequest(f"no adapter directory at {relative!r}", param="path") from exc
    if not resolved.is_relative_to(real_root):
        raise InvalidRequest("path leads outside the adapter root", param="path")
    return resolved


def content_sha256(directory: Path) -> str:
    """sha256 over the peft files (name and each file's own sha256), in a fixed order."""
    outer = hashlib.sha256()
    for name in CONTENT_FILES:
        inner = hashlib.sha256()
        with (directory / name).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def validate_adapter(
    root: Path,
    relative: str,
    base: BaseModelInfo,
    *,
    max_rank: int,
    expected_sha256: str | None = None,
) -> ValidatedAdapter:
    """Run every check on `<root>/<relative>`; the first failure is an `InvalidRequest`."""
    directory = confine(root, relative)
    if not directory.is_dir():
        raise InvalidRequest(f"{relative!r} is not a directory", param="path")
    real_root = root.resolve()
    for name in CONTENT_FILES:
        file = directory / name
        if not file.is_file():
            raise InvalidRequest(f"{relative!r} has no {name}", param="path")
        if not file.resolve().is_relative_to(real_root):
            raise InvalidRequest(f"{name} links outside the adapter root", param="path")
    sha256 = content_sha256(directory)
    if expected_sha256 is not None and expected_sha256.lower() != sha256:
        raise InvalidRequest(
            f"sha256 mismatch: the files hash to {sha256}, not {expected_sha256}", param="sha256"
        )
    config = _read_config(directory / CONFIG_FILE)
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidRequest(f"{CONFIG_FILE} has no valid rank 'r'", param="path")
    if rank > max_rank:
        raise InvalidRequest(
            f"rank {rank} is above the engine's maximum LoRA rank {max_rank}", param="path"
        )
    targets = _target_modules(config, base)
    _check_shapes(directory / WEIGHT_FILES[0], base, rank)
    named = config.get("base_model_name_or_path")
    base_model = named if isinstance(named, str) and named else None
    return ValidatedAdapter(directory, relative, sha256, rank, targets, base_model)


def check_registration(
    name: str,
    path: str,
    *,
    sha256: str | None,
    base_model: str | None,
    manifest: Mapping[str, Any] | None,
    base: ServedBase,
    root: Path,
    max_rank: int,
) -> VersionSpec:
    """Everything a registration must pass: the name, the base it names, then its files."""
    if not ADAPTER_NAME.match(name) or "--" in name:
        raise InvalidRequest(
            "name must be 1-63 lowercase letters, digits, '.', '_' or '-' (no '--')",
            param="name",
        )
    if name in RESERVED_NAMES or name == base.served_name:
        raise InvalidRequest(f"{name!r} is reserved", param="name")
    if base.info is None:
        raise InvalidRequest(
            "the gateway does not know the base model's shapes; set GATEWAY_ENGINE__MODEL_DIR",
            param="path",
        )
    lineage = dict(manifest or {})
    for named in (base_model, lineage.get("base_model")):
        if isinstance(named, str) and not base.accepts(named):
            raise InvalidRequest(
                f"the adapter is for base model {named!r}; this gateway serves {base.model_id!r}",
                param="base_model",
            )
    checked = validate_adapter(
        root,
        path,
        base.info,
        max_rank=max_rank,
        expected_sha256=sha256,
    )
    if not base.accepts(checked.base_model):
        raise InvalidRequest(
            f"adapter_config.json names base model {checked.base_model!r}; this gateway "
            f"serves {base.model_id!r}",
            param="path",
        )
    return VersionSpec(
        path=checked.relative,
        sha256=checked.sha256,
        base_model=base.model_id,
        rank=checked.rank,
        target_modules=checked.target_modules,
        manifest=lineage,
    )


def _read_config(file: Path) -> dict[str, Any]:
    try:
        config = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{CONFIG_FILE} is not valid JSON: {exc}", param="path") from exc
    if not isinstance(config, dict):
        raise InvalidRequest(f"{CONFIG_FILE} is not a JSON object", param="path")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidRequest(f"{CONFIG_FILE}: only LoRA adapters are served", param="path")
    return config


def _target_modules(config: dict[str, Any], base: BaseModelInfo) -> list[str]:
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidRequest(f"{CONFIG_FILE} has no list of target_modules", param="path")
    unknown = sorted(set(targets) - set(base.shapes))
    if unknown:
        raise InvalidRequest(
            f"target modules {unknown} do not exist in base model {base.name}", param="path"
        )
    return sorted(targets)


def _check_shapes(weights: Path, base: BaseModelInfo, rank: int) -> None:
    """Every LoRA tensor must have the shape the base model's projection needs."""
    header = _safetensors_header(weights)
    found = 0
    for name, info in header.items():
        match = _TENSOR.search(name)
        if match is None:
            continue
        layer, module, half = int(match[1]), match[2], match[3]
        if module not in base.shapes or layer >= base.num_layers:
            raise InvalidRequest(f"tensor {name} does not fit base model {base.name}", param="path")
        in_features, out_features = base.shapes[module]
        want = [rank, in_features] if half == "A" else [out_features, rank]
        if list(info.get("shape", [])) != want:
            raise InvalidRequest(
                f"tensor {name} has shape {info.get('shape')}, base model {base.name} needs "
                f"{want}: the adapter was trained on another base model",
                param="path",
            )
        found += 1
    if not found:
        raise InvalidRequest("the adapter weights hold no LoRA tensors", param="path")


def _safetensors_header(file: Path) -> dict[str, Any]:
    with file.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise InvalidRequest(f"{file.name} is not a safetensors file", param="path")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER_BYTES:
            raise InvalidRequest(f"{file.name} has an oversized header", param="path")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"{file.name} has an unreadable header", param="path") from exc
    if not isinstance(header, dict):
        raise InvalidRequest(f"{file.name} has an unreadable header", param="path")
    header.pop("__metadata__", None)
    return header
