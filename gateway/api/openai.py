"""OpenAI-compatible routes: thin, each one call into the serving service."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import ServiceDep
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.serving import OpenAIService
from gateway.routing.table import AUTO_MODEL

router = APIRouter(prefix="/v1")
_CREATED = int(time.time())


# The two hot endpoints are plain Starlette routes that take their service from app state:
# FastAPI's per-request dependency resolution costs more than the gateway's own work here.


async def chat_completions(request: Request) -> Response:
    """Chat completion on the base model or an adapter, plain or streamed."""
    service: OpenAIService = request.app.state.service
    return await service.handle(request, "/v1/chat/completions", ChatCompletionRequest)


async def completions(request: Request) -> Response:
    """Text completion on the base model or an adapter, plain or streamed."""
    service: OpenAIService = request.app.state.service
    return await service.handle(request, "/v1/completions", CompletionRequest)


# Plain routes (full paths: a router's prefix does not apply to them); docs/api.md has them.
router.add_route("/v1/chat/completions", chat_completions, ["POST"], include_in_schema=False)
router.add_route("/v1/completions", completions, ["POST"], include_in_schema=False)


@router.get("/models")
async def list_models(service: ServiceDep, request: Request) -> dict[str, Any]:
    """The base model, every adapter (its stable version), every pinned `name@version`, and
    `auto` while a route table is in use."""
    catalog = service.catalog
    data = []
    for model_id, target in catalog.model_ids():
        entry: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": _CREATED,
            "owned_by": "lora-gateway",
            "root": target.engine_model,
            "parent": None if target.adapter is None else catalog.base_model,
        }
        data.append(entry)
    if request.app.state.router.active is not None:
        data.insert(
            1,
            {
                "id": AUTO_MODEL,
                "object": "model",
                "created": _CREATED,
                "owned_by": "lora-gateway",
                "root": AUTO_MODEL,
                "parent": catalog.base_model,
            },
        )
    return {"object": "list", "data": data}
