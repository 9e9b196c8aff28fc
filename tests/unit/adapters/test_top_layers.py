"""LoRA on the base model's last layers only (`lora.top_layers`): which layers get it, and
that the layers below it then take no part in the backward pass."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapters.train import TrainConfig, lora_config, top_layers  # noqa: E402
from gateway.testing.models import tiny_llama  # noqa: E402


def test_every_layer_gets_lora_unless_top_layers_is_set() -> None:
    assert top_layers(TrainConfig(), 30) is None
    assert top_layers(TrainConfig(top_layers=15), 30) == list(range(15, 30))
    assert top_layers(TrainConfig(top_layers=30), 30) == list(range(30))
    with pytest.raises(ValueError, match="31"):
        top_layers(TrainConfig(top_layers=31), 30)


def test_an_unset_top_layers_leaves_the_recorded_config_as_it_was() -> None:
    # Runs recorded before the setting existed keep their fingerprints.
    assert "top_layers" not in TrainConfig().to_dict()
    assert TrainConfig(top_layers=2).to_dict()["top_layers"] == 2


def _layer_of(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


def test_lora_sits_on_the_top_layers_and_the_lower_ones_get_no_gradient() -> None:
    base = tiny_llama(num_hidden_layers=4)
    config = TrainConfig(rank=4, alpha=8, target_modules=("q_proj", "down_proj"), top_layers=1)
    model = peft.get_peft_model(base, lora_config(config, 4))
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and {_layer_of(name) for name in trained} == {3}

    hidden: dict[int, torch.Tensor] = {}
    layers = model.get_base_model().model.layers

    def keep(index: int):  # type: ignore[no-untyped-def]
        def hook(module: object, args: object, output: object) -> None:
            hidden[index] = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]

        return hook

    for index, layer in enumerate(layers):
        layer.register_forward_hook(keep(index))
    ids = torch.randint(0, 97, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    # Nothing below the adapted layer needs a gradient, so autograd records none of it.
    assert [hidden[i].requires_grad for i in range(4)] == [False, False, False, True]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
