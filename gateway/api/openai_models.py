"""The OpenAI request fields the gateway reads; every other field passes through untouched."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _OpenAIRequest(BaseModel):
    # Unknown fields are kept, so vLLM receives them unchanged.
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1, max_length=256)
    stream: StrictBool = False
    user: StrictStr | None = None


class ChatCompletionRequest(_OpenAIRequest):
    """`POST /v1/chat/completions`."""

    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionRequest(_OpenAIRequest):
    """`POST /v1/completions`."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
