"""Tiny synthetic base-model shapes and peft adapter directories for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from gateway.registry.validation import BaseModelInfo

# A tiny Llama-shaped base: hidden 8, 2 heads of 4 (1 KV head), MLP 16, 2 layers.
TINY_BASE_CONFIG = {
    "hidden_size": 8,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 16,
    "num_hidden_layers": 2,
}
TINY_BASE = BaseModelInfo.from_config("tiny", TINY_BASE_CONFIG)
MODULES = ("q_proj", "v_proj", "down_proj")


def write_adapter(
    directory: Path,
    rank: int = 2,
    base: BaseModelInfo = TINY_BASE,
    targets: tuple[str, ...] = MODULES,
    fill: float = 1.0,
    base_model: str | None = None,
) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` shaped for `base`.

    `fill` sets the LoRA A values, so two adapters with different fills differ in content.
    """
    directory.mkdir(parents=True)
    config: dict[str, object] = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 4,
        "target_modules": list(targets),
    }
    if base_model is not None:
        config["base_model_name_or_path"] = base_model
    (directory / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for layer in range(base.num_layers):
        for module in targets:
            group = "mlp" if module.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{group}.{module}"
            fan_in, fan_out = base.shapes[module]
            tensors[f"{prefix}.lora_A.weight"] = np.full((rank, fan_in), fill, dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((fan_out, rank), dtype=np.float32)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def copy_adapter(source: Path, target: Path, tag: str) -> Path:
    """Copy a peft adapter directory, giving it new content with the same weights.

    `tag` goes into the safetensors header's `__metadata__`, so the copy hashes differently
    (a new version when registered) but behaves exactly like the source.
    """
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.name != "adapter_model.safetensors":
            (target / file.name).write_bytes(file.read_bytes())
    raw = (source / "adapter_model.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = {**header.get("__metadata__", {}), "copy": tag}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    # The data section must start 8-byte aligned; pad the header with spaces as writers do.
    encoded += b" " * (-len(encoded) % 8)
    blob = len(encoded).to_bytes(8, "little") + encoded + raw[8 + size :]
    (target / "adapter_model.safetensors").write_bytes(blob)
    return target


def write_tiny_tree(root: Path, name: str, versions: int) -> None:
    """`root/model/config.json` (the tiny base) and `root/adapters/<name>/v1..vN`, each
    version with weights of its own (filled with its number)."""
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "config.json").write_text(json.dumps(TINY_BASE_CONFIG))
    for version in range(1, versions + 1):
        write_adapter(root / "adapters" / name / f"v{version}", fill=float(version))
