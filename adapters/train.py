"""Train one LoRA adapter with peft on (prompt, response) pairs.

The output directory holds peft's own files, which are the contract with vLLM
(`adapter_config.json` + `adapter_model.safetensors`), and a `manifest.json`
beside them that records where the adapter came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters import row_attention
from adapters.batching import IGNORE, Step, collate, encode, epochs

log = logging.getLogger(__name__)

BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Example:
    """One supervised pair: the user's prompt and the assistant's answer, after any earlier
    messages (a system prompt, earlier turns) as (role, content) pairs."""

    prompt: str
    response: str
    history: tuple[tuple[str, str], ...] = ()

    def messages(self) -> list[dict[str, str]]:
        """The chat messages the answer follows (the history, then the user's prompt)."""
        earlier = [{"role": role, "content": content} for role, content in self.history]
        return [*earlier, {"role": "user", "content": self.prompt}]

    def as_row(self) -> dict[str, Any]:
        """The canonical JSON form (a history only when there is one)."""
        row: dict[str, Any] = {"prompt": self.prompt, "response": self.response}
        if self.history:
            row["history"] = [list(pair) for pair in self.history]
        return row


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; everything that changes the weights lives here."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    # LoRA on the last `top_layers` layers only (None: every layer).
    top_layers: int | None = None
    learning_rate: float = 3e-3
    steps: int = 20
    batch_size: int = 8
    warmup_steps: int = 2
    max_length: int = 128
    seed: int = 0
    threads: int = 2
    # bf16 matmuls under autocast (LoRA weights and optimizer stay float32): about twice
    # as fast on CPUs with AVX512-BF16/AMX, same loss curve. Only used where the CPU has
    # native bf16: elsewhere (e.g. AVX2-only CPUs) emulated bf16 is many times slower.
    bf16_autocast: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (tuples become lists; `top_layers` only when set, so the
        fingerprints of runs from before it existed stay the same)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        if self.top_layers is None:
            del data["top_layers"]
        return data


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports besides its files."""

    steps: int
    final_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)


def dataset_bytes(examples: Sequence[Example]) -> bytes:
    """Canonical JSONL form of a dataset: one sorted-key object per line."""
    lines = (json.dumps(ex.as_row(), ensure_ascii=False) for ex in examples)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def dataset_sha256(examples: Sequence[Example]) -> str:
    """Hex sha256 of the canonical JSONL form: equal data hashes equally wherever it lives."""
    return hashlib.sha256(dataset_bytes(examples)).hexdigest()


def fingerprint(examples: Sequence[Example], config: TrainConfig, base_dir: Path) -> str:
    """Hash of everything that determines the trained weights (data, config, base model)."""
    payload = json.dumps(
        {
            "dataset_sha256": dataset_sha256(examples),
            "config": config.to_dict(),
            "base_model_dir": base_dir.name,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_manifest(adapter_dir: Path) -> dict[str, Any] | None:
    """The manifest of a finished adapter directory, or None if absent or unreadable."""
    try:
        data = json.loads((adapter_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def answer_loss(model: Any, step: Step) -> Any:
    """Mean cross-entropy of the answer tokens, as the model's own loss gives it, with the
    output layer (a fifth of the model's weights, 49,152 words wide) applied to the answer
    positions only rather than to every prompt token too. The step's rows lie end to end:
    the model's attention keeps each row to itself, by their restarting positions (with no
    attention mask and no cache, transformers' own attention does too)."""
    import torch

    inner = model.get_base_model()
    device = next(model.parameters()).device
    hidden = inner.get_decoder()(
        input_ids=step.input_ids.to(device),
        position_ids=step.position_ids.to(device),
        use_cache=False,
    ).last_hidden_state
    # Position t predicts token t + 1. A row starts with its prompt, whose labels are
    # IGNORE, so a row's last position takes no loss from the row packed after it.
    targets = step.labels[:, 1:].to(device)
    keep = targets != IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def top_layers(config: TrainConfig, layers: int) -> list[int] | None:
    """The indices of the layers that get LoRA (None: all `layers` of the base model)."""
    if config.top_layers is None:
        return None
    if config.top_layers > layers:
        raise ValueError(f"top_layers is {config.top_layers}; the base model has {layers} layers")
    return list(range(layers - config.top_layers, layers))


def lora_config(config: TrainConfig, layers: int) -> Any:
    """peft's `LoraConfig` for a base model of `layers` layers."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=top_layers(config, layers),
        task_type="CAUSAL_LM",
    )


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth: short runs stay stable at a high rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = (step - config.warmup_steps) / span
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


# Called after every step with (step, steps, loss): the command line's progress bar.
StepCallback = Callable[[int, int, float], None]


def device_name() -> str:
    """Where training runs: the GPU when one is present, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def attention_for(device: str) -> str:
    """The attention transformers computes a step's rows with: per row on the CPU
    (`adapters.row_attention`), torch's fused kernels with the rows' mask elsewhere."""
    return row_attention.register() if device == "cpu" else "sdpa"


def compute_dtype(config: TrainConfig, device: str) -> str:
    """The matmul precision: bf16 on a GPU or a CPU with native bf16, float32 elsewhere."""
    if not config.bf16_autocast:
        return "float32"
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if native_bf16() else "float32"


def _fit(
    base_dir: Path,
    examples: Sequence[Example],
    config: TrainConfig,
    tmp: Path,
    on_step: StepCallback | None = None,
    base_model_id: str = BASE_MODEL_ID,
) -> TrainResult:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The command line draws its own progress bar; transformers' loading bar would cut it.
    hf_logging.disable_progress_bar()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    device = device_name()
    # float32 weights: bf16 updates at this learning rate would round away on a short run.
    base = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation=attention_for(device)
    )
    model = get_peft_model(base, lora_config(config, base.config.num_hidden_layers)).to(device)
    model.train()
    encoded = [encode(tokenizer, ex, config.max_length) for ex in examples]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))

    autocast = compute_dtype(config, device) == "bfloat16"
    log.info("training on %s with %s matmuls", device, "bf16" if autocast else "float32")
    losses: list[float] = []
    started = time.perf_counter()
    batches = epochs(len(encoded), config.batch_size, config.seed)
    for step in range(config.steps):
        step_tensors = collate([encoded[i] for i in next(batches)])
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = answer_loss(model, step_tensors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        log.info("step %s/%s loss %.4f", step + 1, config.steps, losses[-1])
        if on_step is not None:
            on_step(step + 1, config.steps, losses[-1])
    seconds = time.perf_counter() - started

    # Name the hub id, not this machine's path: the adapter is portable to any copy of the base.
    model.peft_config["default"].base_model_name_or_path = base_model_id
    # With embedding layers on "auto", peft looks the base model up on the hub; the adapter
    # trains no embeddings, so say so and stay offline.
    model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    # peft also writes a placeholder model card; the manifest is this adapter's card.
    (tmp / "README.md").unlink(missing_ok=True)
    (tmp / ADAPTER_WEIGHTS).chmod(0o644)
    return TrainResult(steps=config.steps, final_loss=losses[-1], seconds=seconds, losses=losses)


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found: dict[str, str] = {}
    for package in ("torch", "transformers", "peft"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def train_lora(
    base_dir: Path,
    examples: list[Example],
    out_dir: Path,
    config: TrainConfig,
    *,
    name: str | None = None,
    version: int = 1,
    on_step: StepCallback | None = None,
    lineage: dict[str, Any] | None = None,
    base_model_id: str = BASE_MODEL_ID,
) -> Path:
    """Train a LoRA adapter and publish it atomically at `out_dir`; return that path."""
    if not examples:
        raise ValueError("cannot train on an empty dataset")
    name = name or (out_dir.parent.name if out_dir.name.startswith("v") else out_dir.name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A crash leaves only a stray temp dir; readers never see a half-written adapter.
    sweep_strays(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        log.info("training %s: %s examples, %s steps", name, len(examples), config.steps)
        result = _fit(base_dir, examples, config, tmp, on_step, base_model_id)
        weights = tmp / ADAPTER_WEIGHTS
        data = dataset_bytes(examples)
        manifest: dict[str, Any] = {
            "name": name,
            "version": version,
            "base_model": base_model_id,
            "base_model_dir": base_dir.name,
            "dataset": {
                "sha256": hashlib.sha256(data).hexdigest(),
                "examples": len(examples),
                "bytes": len(data),
            },
            "training": config.to_dict(),
            "fingerprint": fingerprint(examples, config, base_dir),
            "steps": result.steps,
            "final_loss": round(result.final_loss, 6),
            "losses": [round(loss, 6) for loss in result.losses],
            "train_seconds": round(result.seconds, 3),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "artifact": {
                "file": ADAPTER_WEIGHTS,
                "sha256": _sha256_file(weights),
                "bytes": weights.stat().st_size,
            },
            "libraries": _versions(),
            **(lineage or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("adapter %s ready at %s (loss %.4f)", name, out_dir, result.final_loss)
    return out_dir


def sweep_strays(out_dir: Path) -> list[Path]:
    """Remove what a killed run left beside `out_dir` (`.NAME.tmp-PID` of a process that is
    gone); return what was removed."""
    removed = []
    for stray in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = stray.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stray, ignore_errors=True)
            removed.append(stray)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished directory into place; a directory rename is atomic, a replace is not."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
