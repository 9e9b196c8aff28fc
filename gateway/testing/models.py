"""A tiny random Llama for tests that need a real model's code paths (training, LoRA,
quantization) without a real model's weights. Needs torch and transformers."""

from __future__ import annotations

from typing import Any


def tiny_llama(seed: int = 0, **config: Any) -> Any:
    """A seeded random `LlamaForCausalLM`: 97 words, hidden 32, MLP 64, 2 layers, 4 heads of
    8 with 2 KV heads, tied embeddings; `config` overrides any of `LlamaConfig`'s fields."""
    import torch
    import transformers

    settings: dict[str, Any] = {
        "vocab_size": 97,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        **config,
    }
    torch.manual_seed(seed)
    llama: Any = transformers.LlamaForCausalLM  # untyped in transformers
    return llama(transformers.LlamaConfig(**settings))
