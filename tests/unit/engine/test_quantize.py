"""Quantizing a checkpoint into the compressed-tensors format (tiny random Llama, no vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from gateway.engine import basemodel  # noqa: E402
from gateway.engine import quantize as quantize_module  # noqa: E402
from gateway.engine.quantize import (  # noqa: E402
    GROUP_SIZE,
    MARKER,
    quantize_checkpoint,
    symmetric_scale,
)
from gateway.testing.models import tiny_llama  # noqa: E402

PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _tiny_llama(target: Path) -> Path:
    model = tiny_llama(
        vocab_size=256, hidden_size=128, intermediate_size=192, max_position_embeddings=64
    ).to(torch.bfloat16)
    model.save_pretrained(target)
    (target / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (target / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (target / "gateway-prepared.json").write_text(json.dumps({"quantization": "bf16"}))
    return target


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("tiny") / "bf16")


@pytest.fixture(scope="module")
def source_weights(source: Path) -> dict[str, torch.Tensor]:
    return load_file(str(source / "model.safetensors"))


@pytest.fixture(scope="module")
def w8a8(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_checkpoint(source, tmp_path_factory.mktemp("q") / "w8a8", "w8a8")


@pytest.fixture(scope="module")
def w4a16(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_checkpoint(source, tmp_path_factory.mktemp("q") / "w4a16", "w4a16")


def _projection_keys(weights: dict[str, torch.Tensor]) -> list[str]:
    return [
        f"model.layers.{layer}.{name}"
        for layer in range(2)
        for name in PROJECTIONS
        if f"model.layers.{layer}.{name}.weight" in weights
    ]


def test_w8a8_weights_dequantize_within_half_a_step_per_channel(
    w8a8: Path, source_weights: dict[str, torch.Tensor]
) -> None:
    written = load_file(str(w8a8 / "model.safetensors"))
    keys = _projection_keys(source_weights)
    assert len(keys) == 14
    for prefix in keys:
        original = source_weights[f"{prefix}.weight"].float()
        q = written[f"{prefix}.weight"]
        scale = written[f"{prefix}.weight_scale"]
        assert q.dtype == torch.int8
        assert scale.dtype == torch.float32
        assert scale.shape == (original.shape[0], 1)
        # absmax / 127 leaves the int8 range unclipped: the row's extreme lands on ±127.
        assert q.abs().amax(dim=1).eq(127).all()
        error = (q.float() * scale - original).abs()
        assert (error <= scale / 2 * (1 + 1e-5)).all(), prefix


def test_w4a16_weights_dequantize_within_half_a_step_per_group(
    w4a16: Path, source_weights: dict[str, torch.Tensor]
) -> None:
    written = load_file(str(w4a16 / "model.safetensors"))
    for prefix in _projection_keys(source_weights):
        original = source_weights[f"{prefix}.weight"].float()
        rows, columns = original.shape
        packed = written[f"{prefix}.weight_packed"]
        scale = written[f"{prefix}.weight_scale"]
        assert packed.dtype == torch.int32
        assert packed.shape == (rows, columns // 8)
        assert written[f"{prefix}.weight_shape"].tolist() == [rows, columns]
        assert scale.shape == (rows, columns // GROUP_SIZE)
        assert scale.dtype == torch.bfloat16
        q = unpack_from_int32(packed, 4, torch.Size([rows, columns]))
        assert q.min() >= -7 and q.max() <= 7
        per_column = scale.float().repeat_interleave(GROUP_SIZE, dim=1)
        error = (q.float() * per_column - original).abs()
        assert (error <= per_column / 2 * (1 + 1e-5)).all(), prefix


def test_only_decoder_projections_are_quantized(
    w8a8: Path, w4a16: Path, source_weights: dict[str, torch.Tensor]
) -> None:
    for directory in (w8a8, w4a16):
        written = load_file(str(directory / "model.safetensors"))
        for key, tensor in source_weights.items():
            if not any(f".{name}." in key for name in PROJECTIONS):
                assert torch.equal(written[key], tensor), key
        # lm_head is tied to the embeddings: nothing is added for it.
        assert not any(key.startswith("lm_head") for key in written)


@pytest.mark.parametrize(
    ("scheme", "fmt", "activations"),
    [("w8a8", "int-quantized", True), ("w4a16", "pack-quantized", False)],
)
def test_config_is_accepted_by_compressed_tensors(
    scheme: str, fmt: str, activations: bool, w8a8: Path, w4a16: Path
) -> None:
    directory = {"w8a8": w8a8, "w4a16": w4a16}[scheme]
    raw = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert raw["quant_method"] == "compressed-tensors"
    parsed = QuantizationConfig.model_validate(raw)
    assert parsed.format == fmt
    assert parsed.quantization_status == "compressed"
    assert parsed.ignore == ["lm_head"]
    group = parsed.config_groups["group_0"]
    assert not isinstance(group, list)
    assert group.targets == ["Linear"]
    assert group.weights is not None
    assert group.weights.symmetric
    assert (group.input_activations is not None) is activations
    if scheme == "w4a16":
        assert (group.weights.num_bits, group.weights.group_size) == (4, GROUP_SIZE)
    else:
        assert group.weights.num_bits == 8
        assert group.input_activations is not None
        assert group.input_activations.dynamic is True


def _own_dequantization(written: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    scale = written[f"{prefix}.weight_scale"].float()
    if f"{prefix}.weight_packed" in written:
        shape = torch.Size(written[f"{prefix}.weight_shape"].tolist())
        q = unpack_from_int32(written[f"{prefix}.weight_packed"], 4, shape)
        return q.float() * scale.repeat_interleave(GROUP_SIZE, dim=1)
    return written[f"{prefix}.weight"].float() * scale


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_compressed_tensors_reads_the_checkpoint_back_as_written(
    scheme: str, w8a8: Path, w4a16: Path, source_weights: dict[str, torch.Tensor]
) -> None:
    # transformers' compressed-tensors loader parses config.json, finds every
    # packed tensor by name and decompresses it: the layout on disk is right
    # when it gives back exactly the values we meant to store.
    directory = {"w8a8": w8a8, "w4a16": w4a16}[scheme]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory,
        dtype=torch.float32,
        quantization_config=transformers.CompressedTensorsConfig(dequantize=True),
    )
    state = model.state_dict()
    written = load_file(str(directory / "model.safetensors"))
    for prefix in _projection_keys(source_weights):
        expected = _own_dequantization(written, prefix)
        torch.testing.assert_close(state[f"{prefix}.weight"].float(), expected, rtol=0, atol=0)
        assert not torch.equal(expected, source_weights[f"{prefix}.weight"].float())


def test_tokenizer_and_templates_travel_but_markers_do_not(w8a8: Path, source: Path) -> None:
    for name in ("chat_template.jinja", "tokenizer_config.json", "generation_config.json"):
        assert (w8a8 / name).read_bytes() == (source / name).read_bytes()
    assert not (w8a8 / "gateway-prepared.json").exists()
    assert json.loads((w8a8 / MARKER).read_text())["scheme"] == "w8a8"
    assert not w8a8.with_name(w8a8.name + ".tmp").exists()


def test_quantize_checkpoint_is_idempotent(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "w4a16"
    quantize_checkpoint(source, target, "w4a16")
    written_at = (target / "model.safetensors").stat().st_mtime_ns
    assert quantize_checkpoint(source, target, "w4a16") == target
    assert (target / "model.safetensors").stat().st_mtime_ns == written_at


def test_quantize_checkpoint_redoes_a_directory_of_another_scheme(
    source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "model"
    quantize_checkpoint(source, target, "w4a16")
    quantize_checkpoint(source, target, "w8a8")
    written = load_file(str(target / "model.safetensors"))
    assert written["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    assert "model.layers.0.mlp.up_proj.weight_packed" not in written


def test_unknown_scheme_is_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="w2a16"):
        quantize_checkpoint(source, tmp_path / "x", "w2a16")
    assert not (tmp_path / "x").exists()


def test_an_unknown_matrix_is_refused_rather_than_mislabelled(tmp_path: Path) -> None:
    source = tmp_path / "odd"
    source.mkdir()
    (source / "config.json").write_text("{}")
    save_file(
        {"model.vision_proj.weight": torch.ones(64, 64, dtype=torch.bfloat16)},
        str(source / "model.safetensors"),
    )
    with pytest.raises(ValueError, match="vision_proj"):
        quantize_checkpoint(source, tmp_path / "out", "w8a8")
    assert not (tmp_path / "out").exists()


def test_all_zero_rows_quantize_to_zero() -> None:
    weight = torch.zeros(4, GROUP_SIZE * 2, dtype=torch.bfloat16)
    weight[1, 3] = 0.5
    for scheme in ("w8a8", "w4a16"):
        scale = symmetric_scale(weight, scheme)
        assert torch.isfinite(scale).all() and (scale > 0).all()
        compressed = quantize_module.quantize_weight(weight, scheme)
        assert all(torch.isfinite(t.float()).all() for t in compressed.values())


def test_prepare_base_model_quantizes_once_and_reuses(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF v1")
    calls: list[str] = []
    real_quantize = quantize_module.quantize_checkpoint

    def counting_quantize(src: Path, dst: Path, scheme: str) -> Path:
        calls.append(scheme)
        return real_quantize(src, dst, scheme)

    monkeypatch.setattr(basemodel, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setattr(basemodel, "convert_gguf", lambda cache_dir: source)
    monkeypatch.setattr(quantize_module, "quantize_checkpoint", counting_quantize)

    first = basemodel.prepare_base_model(tmp_path / "cache", "w4a16")
    again = basemodel.prepare_base_model(tmp_path / "cache", "w4a16")
    assert first == again == tmp_path / "cache" / "models" / "smollm2-135m-instruct-w4a16"
    assert calls == ["w4a16"]
    marker = json.loads((first / "gateway-prepared.json").read_text())
    assert marker["quantization"] == "w4a16"
    assert marker["source_sha256"] == basemodel.sha256_file(gguf)

    # A new GGUF (a package upgrade) invalidates the quantized directory.
    gguf.write_bytes(b"GGUF v2")
    basemodel.prepare_base_model(tmp_path / "cache", "w4a16")
    assert calls == ["w4a16", "w4a16"]


def test_prepare_base_model_refuses_an_unknown_quantization(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int3"):
        basemodel.prepare_base_model(tmp_path, "int3")
