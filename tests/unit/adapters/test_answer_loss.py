"""The training loss, computed with the output layer on the answer positions only, equals the
model's own loss over the same labels, and so do its gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapters.train import _IGNORE, answer_loss  # noqa: E402
from gateway.testing.models import tiny_llama  # noqa: E402


def _tiny_lora_model() -> object:
    base = tiny_llama()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peft.get_peft_model(base, lora)
    # LoRA's B starts at zero: move it so that the adapter takes part in the loss.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    return model


def _batch() -> tuple[object, object, object]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 11), generator=generator)
    attention = torch.ones_like(ids)
    labels = torch.full_like(ids, _IGNORE)
    # Prompts of different lengths, answers after them, padding at the end of row 2.
    labels[0, 6:] = ids[0, 6:]
    labels[1, 3:9] = ids[1, 3:9]
    labels[2, 8:9] = ids[2, 8:9]
    attention[2, 9:] = 0
    return ids, attention, labels


def _grads(model: object) -> list[object]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]  # type: ignore[attr-defined]


def test_the_answer_loss_is_the_models_own_loss_and_gradient() -> None:
    model = _tiny_lora_model()
    ids, attention, labels = _batch()

    own = model(input_ids=ids, attention_mask=attention, labels=labels).loss  # type: ignore[operator]
    own.backward()
    expected = _grads(model)
    model.zero_grad()  # type: ignore[attr-defined]

    ours = answer_loss(model, ids, attention, labels)
    ours.backward()
    got = _grads(model)

    assert torch.allclose(ours, own, rtol=1e-5, atol=1e-6)
    assert len(got) == len(expected) > 0
    for mine, theirs in zip(got, expected, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    # The answer positions do matter: another label changes the loss.
    labels[1, 5] = (labels[1, 5] + 1) % 97
    assert not torch.allclose(answer_loss(model, ids, attention, labels), ours)
