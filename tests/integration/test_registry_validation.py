"""The demo adapters pass the registry's checks against the real embedded base model."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.registry.validation import BaseModelInfo, validate_adapter

from .conftest import EngineAssets

pytestmark = pytest.mark.integration

SEVEN_PROJECTIONS = sorted(
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
)


@pytest.mark.parametrize("adapter", ["pirate", "french", "shout"])
def test_demo_adapters_fit_the_embedded_base(engine_assets: EngineAssets, adapter: str) -> None:
    base = BaseModelInfo.from_model_dir("smollm2-135m-instruct", engine_assets.model_dir)

    got = validate_adapter(engine_assets.adapter_root, f"{adapter}/v1", base, max_rank=16)

    assert got.rank == 8
    assert got.target_modules == SEVEN_PROJECTIONS


def test_a_demo_adapter_is_refused_below_its_rank(engine_assets: EngineAssets) -> None:
    base = BaseModelInfo.from_model_dir("smollm2-135m-instruct", engine_assets.model_dir)

    with pytest.raises(InvalidRequest, match="maximum LoRA rank 4"):
        validate_adapter(engine_assets.adapter_root, "pirate/v1", base, max_rank=4)
