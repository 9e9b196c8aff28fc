"""Quantize a Llama-style Hugging Face checkpoint into the compressed-tensors format.

vLLM's compressed-tensors loader serves these checkpoints with LoRA on the CPU.
The quantization is plain round-to-nearest with symmetric absmax scales; no
calibration data is needed because activations are either quantized per token
at run time (w8a8) or left in bf16 (w4a16):

- ``w8a8``:  int8 weights, one scale per output channel (absmax / 127),
  dynamic per-token int8 activations; stored as ``int-quantized``.
- ``w4a16``: int4 weights, one scale per group of 64 input columns (absmax / 7),
  eight values packed into each int32; stored as ``pack-quantized``.

Only the decoder's seven projections are quantized. Embeddings, norms and the
lm_head (tied to the embeddings in SmolLM2) keep their original dtype.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.engine.checksum import sha256_file

if TYPE_CHECKING:
    import torch
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

log = logging.getLogger(__name__)

SCHEMES: Final = ("w8a8", "w4a16")
# 128, the usual W4A16 group, does not divide SmolLM2's hidden size of 576.
GROUP_SIZE: Final = 64
MARKER: Final = "gateway-quantized.json"
_WEIGHT_INDEX: Final = "model.safetensors.index.json"

# The seven decoder projections: exactly the `Linear` layers of a Llama decoder
# besides lm_head, which is why the config can target "Linear" and ignore lm_head.
_PROJECTION = re.compile(
    r"(?:^|\.)layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)\.weight$"
)
_UNQUANTIZED_MATRICES = re.compile(r"(?:^|\.)(?:embed_tokens|lm_head)\.weight$")


def quantization_scheme(scheme: str) -> QuantizationScheme:
    """The compressed-tensors scheme for one of SCHEMES, targeting every Linear layer."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationScheme,
        QuantizationStrategy,
        QuantizationType,
    )

    if scheme == "w8a8":
        return QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(
                num_bits=8,
                type=QuantizationType.INT,
                strategy=QuantizationStrategy.CHANNEL,
                symmetric=True,
                dynamic=False,
            ),
            input_activations=QuantizationArgs(
                num_bits=8,
                type=QuantizationType.INT,
                strategy=QuantizationStrategy.TOKEN,
                symmetric=True,
                dynamic=True,
            ),
        )
    if scheme == "w4a16":
        return QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(
                num_bits=4,
                type=QuantizationType.INT,
                strategy=QuantizationStrategy.GROUP,
                group_size=GROUP_SIZE,
                symmetric=True,
                dynamic=False,
            ),
        )
    raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")


def compression_format(scheme: str) -> str:
    """The on-disk compressed-tensors format vLLM expects for a scheme."""
    from compressed_tensors.config import CompressionFormat

    formats = {
        "w8a8": CompressionFormat.int_quantized,
        "w4a16": CompressionFormat.pack_quantized,
    }
    if scheme not in formats:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    return str(formats[scheme].value)


def quantization_config(scheme: str) -> QuantizationConfig:
    """The `quantization_config` describing a checkpoint written by quantize_checkpoint."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    return QuantizationConfig(
        config_groups={"group_0": quantization_scheme(scheme)},
        format=compression_format(scheme),
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=["lm_head"],
    )


def symmetric_scale(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """Absmax scales: shape (out, 1) for w8a8, (out, in / GROUP_SIZE) for w4a16."""
    import torch

    # Widen first: bf16 absmax / 127 would round the scale before it is stored.
    wide = weight.float()
    if scheme == "w8a8":
        absmax = wide.abs().amax(dim=1, keepdim=True)
        # vLLM keeps int8 channel scales in float32, so store them exactly so.
        scale = (absmax / 127.0).to(torch.float32)
    elif scheme == "w4a16":
        rows, columns = wide.shape
        if columns % GROUP_SIZE:
            raise ValueError(f"{columns} input columns are not a multiple of {GROUP_SIZE}")
        absmax = wide.view(rows, columns // GROUP_SIZE, GROUP_SIZE).abs().amax(dim=2)
        # vLLM keeps group scales in the model dtype; rounding them can push
        # |w / scale| to at most 7 * (1 + 2**-8), which still rounds to 7.
        scale = (absmax / 7.0).to(weight.dtype)
    else:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    # An all-zero row or group would divide by zero; any positive scale maps it to 0.
    return scale.clamp_min(torch.finfo(scale.dtype).tiny)


def quantize_weight(weight: torch.Tensor, scheme: str) -> dict[str, torch.Tensor]:
    """Compress one Linear weight; keys are local names (`weight`, `weight_packed`, ...)."""
    from compressed_tensors.compressors import BaseCompressor

    quant_scheme = quantization_scheme(scheme)
    compressor = BaseCompressor.get_value_from_registry(compression_format(scheme))
    scale = symmetric_scale(weight, scheme)
    # Dividing in float32 keeps the rounding honest: bf16 division alone can
    # land a value on the wrong side of a rounding boundary.
    compressed: dict[str, torch.Tensor] = compressor.compress(
        {"weight": weight.float(), "weight_scale": scale}, quant_scheme
    )
    return {name: tensor.contiguous() for name, tensor in compressed.items()}


def _quantize_file(source: Path, target: Path, scheme: str) -> list[str]:
    """Quantize the projections of one safetensors file; return the keys written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() or {}
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
            tensor = handle.get_tensor(key)
            if _PROJECTION.search(key):
                prefix = key.removesuffix("weight")
                for name, value in quantize_weight(tensor, scheme).items():
                    out[prefix + name] = value
            elif tensor.ndim == 2 and not _UNQUANTIZED_MATRICES.search(key):
                # The config targets every Linear layer; an unknown matrix would be
                # left in bf16 while vLLM expects it quantized.
                raise ValueError(f"unsupported weight {key}: not a Llama-style decoder")
            else:
                out[key] = tensor
    save_file(out, str(target), metadata={**metadata, "format": "pt"})
    return list(out)


def _source_digest(weights: list[Path]) -> str:
    return ",".join(f"{path.name}:{sha256_file(path)}" for path in weights)


def _already_quantized(dst: Path, scheme: str, digest: str) -> bool:
    try:
        marker = json.loads((dst / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("scheme") == scheme and marker.get("source_weights") == digest)


def quantize_checkpoint(src: Path, dst: Path, scheme: str) -> Path:
    """Write `src` quantized with `scheme` to `dst` once (atomically); return `dst`."""
    from compressed_tensors import __version__ as ct_version
    from compressed_tensors.compressors import ModelCompressor

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    weights = sorted(src.glob("*.safetensors"))
    if not weights or not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a Hugging Face safetensors checkpoint")
    digest = _source_digest(weights)
    if _already_quantized(dst, scheme, digest):
        return dst

    started = time.monotonic()
    log.info("quantizing %s to %s as %s", src, dst, scheme)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Tokenizer, chat template and generation config travel unchanged; another
    # step's marker would make a false claim about this directory.
    for item in src.iterdir():
        if (
            item.is_file()
            and item.suffix != ".safetensors"
            and not item.name.startswith("gateway-")
        ):
            shutil.copy2(item, tmp / item.name)

    weight_map: dict[str, str] = {}
    for path in weights:
        for key in _quantize_file(path, tmp / path.name, scheme):
            weight_map[key] = path.name
    if (src / _WEIGHT_INDEX).is_file():
        index = json.loads((src / _WEIGHT_INDEX).read_text())
        index["weight_map"] = dict(sorted(weight_map.items()))
        (tmp / _WEIGHT_INDEX).write_text(json.dumps(index, indent=2))

    ModelCompressor(quantization_config=quantization_config(scheme)).update_config(str(tmp))
    seconds = time.monotonic() - started
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "scheme": scheme,
                "source_weights": digest,
                "compressed_tensors": ct_version,
                "seconds": round(seconds, 2),
            }
        )
    )
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    log.info("quantized %s as %s in %.1fs", dst, scheme, seconds)
    return dst
