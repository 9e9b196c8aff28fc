"""A fast fake of vLLM's OpenAI server, for unit tests and gateway-overhead benchmarks.

It answers the endpoints the gateway uses, echoes what it received (so tests can see
exactly what the gateway forwarded) and can be told to be slow, fail or be down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class FakeEngineState:
    """Knobs and records of the fake engine."""

    base_model: str = "base"
    loras: dict[str, str] = field(default_factory=dict)
    healthy: bool = True
    delay_s: float = 0.0
    stream_chunks: int = 3
    chunk_delay_s: float = 0.0
    status: int = 200
    # The text of every whole (not streamed) answer.
    answer: str = "Hello from the fake engine."
    # Whole answers per served model name (`pirate--v2`), over `answer`.
    answers: dict[str, str] = field(default_factory=dict)
    # Status per served model name, over `status` (a candidate that fails), once it has
    # answered `fail_after` generations normally (a version that warms up, then fails).
    statuses: dict[str, int] = field(default_factory=dict)
    fail_after: dict[str, int] = field(default_factory=dict)
    generations: Counter[str] = field(default_factory=Counter)
    received: list[dict[str, Any]] = field(default_factory=list)
    received_headers: list[dict[str, str]] = field(default_factory=list)
    keep_records: bool = True
    # Drop the connection after this many stream events, like an engine that dies.
    break_after_chunks: int | None = None
    # `/v1/load_lora_adapter` calls per adapter name (refused ones too).
    load_calls: Counter[str] = field(default_factory=Counter)
    load_delay_s: float = 0.0
    # Anything but 200 refuses every load with this status, like a vLLM that cannot load.
    load_status: int = 200
    unload_calls: Counter[str] = field(default_factory=Counter)
    # An unloading LoRA keeps serving until the unload finishes, as in vLLM.
    unload_delay_s: float = 0.0

    def restart(self) -> None:
        """Forget every LoRA and answer `/health` with 503 until `healthy` is set again."""
        self.loras.clear()
        self.healthy = False


def _served(state: FakeEngineState) -> set[str]:
    return {state.base_model, *state.loras}


def create_fake_vllm(state: FakeEngineState | None = None) -> Starlette:
    """Build the fake engine app around `state` (app.state.fake)."""
    state = state or FakeEngineState()

    async def health(request: Request) -> Response:
        return Response(status_code=200 if state.healthy else 503)

    async def models(request: Request) -> JSONResponse:
        data = [{"id": m, "object": "model", "owned_by": "vllm"} for m in sorted(_served(state))]
        return JSONResponse({"object": "list", "data": data})

    async def load_lora(request: Request) -> Response:
        body = await request.json()
        name = body["lora_name"]
        state.load_calls[name] += 1
        if state.load_delay_s:
            await asyncio.sleep(state.load_delay_s)
        if state.load_status != 200:
            message = f"fake engine cannot load {name}"
            return JSONResponse(_error(message, state.load_status), state.load_status)
        if name in state.loras:
            return JSONResponse(_error(f"adapter {name} already loaded", 400), status_code=400)
        state.loras[name] = body["lora_path"]
        return Response(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(request: Request) -> Response:
        body = await request.json()
        state.unload_calls[body["lora_name"]] += 1
        if state.unload_delay_s:
            await asyncio.sleep(state.unload_delay_s)
        state.loras.pop(body["lora_name"], None)
        return Response("ok")

    async def generate(request: Request) -> Response:
        payload = json.loads(await request.body())
        if state.keep_records:
            state.received.append(payload)
            state.received_headers.append(dict(request.headers))
        if payload.get("model") not in _served(state):
            message = f"The model `{payload.get('model')}` does not exist."
            return JSONResponse(_error(message, 404), status_code=404)
        model = str(payload.get("model"))
        state.generations[model] += 1
        status = state.status
        if model in state.statuses and state.generations[model] > state.fail_after.get(model, 0):
            status = state.statuses[model]
        if status != 200:
            return JSONResponse(_error("fake engine failure", status), status)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        chat = request.url.path.endswith("/chat/completions")
        # Like vLLM: the answer's id is the request id the gateway sent, with a prefix.
        answer_id = ("chatcmpl-" if chat else "cmpl-") + request.headers.get("x-request-id", "x")
        if payload.get("stream"):
            options = payload.get("stream_options") or {}
            usage = isinstance(options, dict) and options.get("include_usage") is True
            return StreamingResponse(
                _stream(state, payload["model"], chat, answer_id, usage),
                media_type="text/event-stream",
            )
        text = state.answers.get(payload["model"], state.answer)
        body = _completion(payload["model"], chat, text)
        return JSONResponse({**body, "id": answer_id})

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/load_lora_adapter", load_lora, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora, methods=["POST"]),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.fake = state
    return app


def _error(message: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}


def _completion(model: str, chat: bool, text: str) -> dict[str, Any]:
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if chat
        else {"index": 0, "text": text, "finish_reason": "stop"}
    )
    return {
        "id": "cmpl-fake",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


class EngineDied(RuntimeError):
    """Raised inside a stream so the server drops the connection mid-answer."""


async def _stream(
    state: FakeEngineState, model: str, chat: bool, answer_id: str, usage: bool
) -> AsyncIterator[bytes]:
    for i in range(state.stream_chunks):
        if state.break_after_chunks is not None and i >= state.break_after_chunks:
            yield b'data: {"id": "cmpl-fa'  # half an event, then the connection drops
            raise EngineDied("fake engine died mid-stream")
        if state.chunk_delay_s:
            await asyncio.sleep(state.chunk_delay_s)
        piece = f"tok{i} "
        choice: dict[str, Any] = (
            {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            if chat
            else {"index": 0, "text": piece, "finish_reason": None}
        )
        chunk = {
            "id": answer_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 0,
            "model": model,
            "choices": [choice],
        }
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    if usage:
        # vLLM's last event when usage is asked for: no choices, the counts.
        n = state.stream_chunks
        last: dict[str, Any] = {
            "id": answer_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 0,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n},
        }
        yield b"data: " + json.dumps(last).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    """Serve the fake engine, accepting `vllm serve`'s arguments (only host/port are used)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?")
    parser.add_argument("model", nargs="?")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--served-model-name", default="base")
    # `NAME=STATUS[@AFTER]`: the model answers generations with this status (a failing
    # version), after answering its first AFTER normally.
    parser.add_argument("--model-status", action="append", default=[])
    args, _ = parser.parse_known_args(argv)
    state = FakeEngineState(base_model=args.served_model_name, keep_records=False)
    for entry in args.model_status:
        name, _, rest = entry.partition("=")
        status, _, after = rest.partition("@")
        state.statuses[name] = int(status)
        state.fail_after[name] = int(after or 0)
    uvicorn.run(
        create_fake_vllm(state),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
