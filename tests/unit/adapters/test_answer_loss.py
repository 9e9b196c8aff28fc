"""The training loss, computed on a step's rows end to end with the output layer on the
answer positions only, equals the model's own loss over the same rows padded one to a line,
and so do its gradients: with the row attention used on the CPU and with transformers'
own attention."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapters import row_attention  # noqa: E402
from adapters.batching import IGNORE, Encoded, collate  # noqa: E402
from adapters.train import answer_loss  # noqa: E402
from gateway.testing.models import tiny_llama  # noqa: E402

ATTENTIONS = [row_attention.register(), "sdpa"]


def _tiny_lora_model(attention: str = "sdpa") -> object:
    base = tiny_llama()
    base.config._attn_implementation = attention
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peft.get_peft_model(base, lora)
    # LoRA's B starts at zero: move both so that every LoRA weight gets a gradient.
    for name, param in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.5)
    return model


def _rows() -> list[Encoded]:
    """Rows of 11, 5, 6 and 4 tokens, each a prompt then an answer."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length, prompt in ((11, 6), (5, 3), (6, 4), (4, 3)):
        ids = torch.randint(0, 97, (length,), generator=generator).tolist()
        rows.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    return rows


def _padded(rows: list[Encoded]) -> tuple[object, object, object]:
    width = max(len(row.ids) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for line, row in enumerate(rows):
        ids[line, : len(row.ids)] = torch.tensor(row.ids)
        labels[line, : len(row.ids)] = torch.tensor(row.labels)
        attention[line, : len(row.ids)] = 1
    return ids, attention, labels


def _grads(model: object) -> list[object]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]  # type: ignore[attr-defined]


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_the_answer_loss_on_rows_end_to_end_is_the_models_own(attention: str) -> None:
    model = _tiny_lora_model()
    rows = _rows()
    ids, mask, labels = _padded(rows)
    own = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # type: ignore[operator]
    own.backward()
    expected = _grads(model)

    model.get_base_model().config._attn_implementation = attention  # type: ignore[attr-defined]
    model.zero_grad()  # type: ignore[attr-defined]
    step = collate(rows)
    assert step.input_ids.shape == (1, 26)
    ours = answer_loss(model, step)
    ours.backward()
    got = _grads(model)

    assert torch.allclose(ours, own, rtol=1e-5, atol=1e-6)
    assert len(got) == len(expected) > 0
    for mine, theirs in zip(got, expected, strict=True):
        assert theirs.abs().max() > 0
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_row_on_the_line_is_computed_as_if_alone(attention: str) -> None:
    """The third row's hidden states are those it gets alone: its positions restart and it
    attends to no row before it."""
    model = _tiny_lora_model(attention)
    rows = _rows()
    decoder = model.get_base_model().get_decoder()  # type: ignore[attr-defined]
    step = collate(rows)

    line = decoder(
        input_ids=step.input_ids, position_ids=step.position_ids, use_cache=False
    ).last_hidden_state
    alone = decoder(input_ids=torch.tensor([rows[2].ids]), use_cache=False).last_hidden_state
    assert torch.allclose(line[0, 16:22], alone[0], atol=1e-5)
    # Read as one long row, it would see the rows before it, and differ.
    plain = decoder(input_ids=step.input_ids, use_cache=False).last_hidden_state
    assert not torch.allclose(plain[0, 16:22], alone[0], atol=1e-3)
