from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from gateway.engine import int8_lora


class PrepackedInt8Linear(torch.nn.Module):
    """What vLLM's oneDNN int8 path leaves behind: no weight, a scale."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = None
        self.weight_scale = torch.nn.Parameter(torch.ones(4, 1))


@pytest.fixture
def patched() -> Iterator[None]:
    int8_lora.install_int8_lora_device_fix()
    yield
    int8_lora.uninstall_int8_lora_device_fix()


def test_vllm_alone_fails_on_a_prepacked_int8_layer() -> None:
    from vllm.lora.layers import base_linear

    int8_lora.uninstall_int8_lora_device_fix()
    with pytest.raises(AttributeError, match="device"):
        base_linear._get_lora_device(PrepackedInt8Linear())


def test_fix_answers_with_the_scale_device(patched: None) -> None:
    from vllm.lora.layers import base_linear

    assert base_linear._get_lora_device(PrepackedInt8Linear()) == torch.device("cpu")


def test_fix_leaves_ordinary_layers_to_vllm(patched: None) -> None:
    from vllm.lora.layers import base_linear

    assert base_linear._get_lora_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert int8_lora.install_int8_lora_device_fix()  # idempotent
    wrapped = base_linear._get_lora_device
    assert getattr(wrapped, "__wrapped__", None) is not None
    assert getattr(wrapped.__wrapped__, "__wrapped__", None) is None
