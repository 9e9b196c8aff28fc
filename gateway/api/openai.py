"""OpenAI-compatible routes: thin, each one call into the serving service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import ServiceDep
from gateway.api.openai_models import ChatCompletionRequest, CompletionRequest
from gateway.api.serving import OpenAIService

router = APIRouter(prefix="/v1")


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
async def list_models(service: ServiceDep) -> dict[str, Any]:
    """The base model, `auto` while a route table is in use, every adapter (its stable
    version) and every `name@version`."""
    return {"object": "list", "data": service.models()}
