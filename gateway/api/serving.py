"""Serve one OpenAI request: parse, resolve the model, forward, relay, record.

The engine knows adapter versions by internal names (`pirate--v2`); answers carry the name
the client used instead (`pirate`, `pirate@2`, the base model's name, or for `auto` the
route's adapter), swapped at the byte level in the `"model"` field of the answer and of
every streamed event (the relay yields whole events, so a field never straddles two).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from gateway.api.auth import Principal, check_adapter_allowed, principal_of
from gateway.api.errors import invalid_json_message, request_id_of
from gateway.api.responses import RelayResponse
from gateway.catalog import CatalogView, ModelCatalog, Target
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied, error_body
from gateway.metrics import Metrics, status_class
from gateway.observability.logs import ACCESS_FIELDS, PROMPT_CHARS
from gateway.quality.judge import JUDGE_HEADER
from gateway.quality.records import Served
from gateway.quality.responselog import ResponseLog
from gateway.rollout.manager import Assignment, RolloutManager
from gateway.rollout.shadow import MAX_BODY_CHARS, PairHalf
from gateway.routing.classifier import Decision
from gateway.routing.router import AutoRouter
from gateway.routing.table import AUTO_MODEL
from gateway.upstream.pool import Lease, UpstreamPool
from gateway.upstream.proxy import EngineProxy, UpstreamReply

log = logging.getLogger(__name__)
# `created` of every model in `/v1/models`: when this process started.
_CREATED = int(time.time())


class OpenAIService:
    """The serving path shared by `/v1/chat/completions` and `/v1/completions`."""

    def __init__(
        self,
        catalogs: CatalogView,
        pool: UpstreamPool,
        proxy: EngineProxy,
        metrics: Metrics,
        router: AutoRouter | None = None,
        rollouts: RolloutManager | None = None,
        responses: ResponseLog | None = None,
        log_prompts: bool = False,
    ) -> None:
        self._log_prompts = log_prompts
        self._catalogs = catalogs
        self._pool = pool
        self._proxy = proxy
        self._metrics = metrics
        self._router = router
        self._rollouts = rollouts
        self._responses = responses
        self._random = random.Random()

    @property
    def catalog(self) -> ModelCatalog:
        """The model names clients may call right now."""
        return self._catalogs.current

    def models(self) -> list[dict[str, Any]]:
        """`/v1/models`: the base model, `auto` while a route table is in use, every adapter
        (its stable version) and every `name@version`."""
        catalog = self.catalog
        data = [
            _model_entry(model_id, target.engine_model, target.adapter is not None, catalog)
            for model_id, target in catalog.model_ids()
        ]
        if self._router is not None and self._router.active is not None:
            data.insert(1, _model_entry(AUTO_MODEL, AUTO_MODEL, True, catalog))
        return data

    async def handle(self, request: Request, endpoint: str, schema: type[BaseModel]) -> Response:
        """Serve one request to `endpoint` (the engine path, e.g. `/v1/completions`)."""
        started = time.perf_counter()
        request_id = request_id_of(request)
        payload = parse_body(await request.body(), schema)
        catalog = self.catalog
        principal = principal_of(request.scope)
        called: str = payload["model"]
        if called == AUTO_MODEL and self._router is not None:
            target, decision = await self._router.route(
                payload, catalog, lambda route: _may_use(principal, route, catalog.base_model)
            )
            headers = {**decision_headers(decision), "x-adapter": target.served}
            adapter = decision.adapter if target.adapter is not None else None
            called = adapter or catalog.base_model
        else:
            target = catalog.resolve(called)
            check_adapter_allowed(principal, target.route, catalog.base_model)
            headers = {"x-route": target.route, "x-adapter": target.served}
        # The quality judge's own requests (admin or open mode only): no rollout, no record.
        internal = request.headers.get(JUDGE_HEADER) == "1" and (
            principal is None or principal.kind != "tenant"
        )
        assignment = (
            None
            if internal
            else self._assign(request, payload, target, principal, endpoint, request_id)
        )
        if assignment is not None:
            target = assignment.target
            headers["x-adapter"] = target.served
            headers["x-variant"] = assignment.variant
        payload["model"] = target.engine_model
        rename = ModelRename.of(target.engine_model, called)
        stream = payload.get("stream") is True
        entry = (
            None
            if internal
            else self._entry(request_id, principal, endpoint, target, assignment, stream, payload)
        )
        strip_usage = stream and entry is not None and _ask_for_usage(payload)
        access: dict[str, Any] = {
            "route": target.route,
            "adapter": target.served,
            "variant": assignment.variant if assignment is not None else None,
            "tenant": principal.name if principal is not None else None,
            "stream": stream,
        }
        if self._log_prompts:
            access["prompt"] = prompt_text(payload)
        request.scope["state"][ACCESS_FIELDS] = access
        self._metrics.in_flight.inc()
        try:
            lease, reply = await self._proxy.dispatch(
                target.adapter.engine_name if target.adapter else None,
                endpoint,
                json.dumps(payload).encode(),
                request_id,
                stream,
            )
        except BaseException as exc:
            self._metrics.in_flight.dec()
            status = _failure_status(exc)
            self._record(endpoint, target, status, started)
            self._log(entry, status, started, b"")
            raise
        access["upstream"] = lease.replica.url
        half = self._shadow(assignment)
        if reply.stream is None:
            lease.release()
            self._metrics.in_flight.dec()
            self._record(endpoint, target, reply.status, started)
            body = reply.body if rename is None else rename.apply(reply.body)
            self._log(entry, reply.status, started, body)
            if half is not None:
                half.primary_done(reply.status, body, time.perf_counter() - started)
            return Response(
                body, status_code=reply.status, media_type=reply.content_type, headers=headers
            )
        end = _StreamEnd(self, reply, lease, endpoint, target, started, half, entry, strip_usage)
        return RelayResponse(
            self._relay(reply, end, request_id, rename),
            status_code=reply.status,
            media_type=reply.content_type,
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            on_close=end.finish,
        )

    def _entry(
        self,
        request_id: str,
        principal: Principal | None,
        endpoint: str,
        target: Target,
        assignment: Assignment | None,
        stream: bool,
        payload: dict[str, Any],
    ) -> Served | None:
        """The response log's record of this request, to be completed when it ends."""
        if self._responses is None:
            return None
        draw = self._random.random()
        adapter = target.adapter
        return Served(
            request_id=request_id,
            tenant=principal.name if principal is not None else "-",
            endpoint=endpoint,
            route=target.route,
            version=adapter.version if adapter is not None else None,
            variant=assignment.variant if assignment is not None else None,
            rollout_id=assignment.rollout_id if assignment is not None else None,
            status=0,
            stream=stream,
            at=time.time(),
            latency_s=0.0,
            ttft_s=None,
            draw=draw,
            payload=payload if self._responses.keeps_text(target.route, draw) else None,
            body=b"",
        )

    def _log(self, entry: Served | None, status: int, started: float, body: bytes) -> None:
        if entry is None or self._responses is None:
            return
        entry.status = status
        entry.latency_s = time.perf_counter() - started
        entry.body = body
        self._responses.record(entry)

    def _assign(
        self,
        request: Request,
        payload: dict[str, Any],
        target: Target,
        principal: Principal | None,
        endpoint: str,
        request_id: str,
    ) -> Assignment | None:
        """The rollout variant of a request that named a route (`name@N` skips rollouts)."""
        if self._rollouts is None or target.exact:
            return None
        owner = principal.name if principal is not None and principal.kind != "anonymous" else None
        return self._rollouts.assign(target, payload, request.headers, owner, endpoint, request_id)

    def _shadow(self, assignment: Assignment | None) -> PairHalf | None:
        """Copy the request to the candidate now that the primary is dispatched."""
        if self._rollouts is None or assignment is None or assignment.shadow is None:
            return None
        return self._rollouts.send_shadow(assignment.shadow)

    async def _relay(
        self, reply: UpstreamReply, end: _StreamEnd, request_id: str, rename: ModelRename | None
    ) -> AsyncIterator[bytes]:
        assert reply.stream is not None
        end.status = reply.status
        first = True
        try:
            async for engine_chunk in reply.stream:
                chunk = engine_chunk if rename is None else rename.apply(engine_chunk)
                if end.entry is not None and b'"usage"' in chunk:
                    chunk = end.take_usage(chunk)
                end.keep(chunk)
                if first:
                    first = False
                    target = end.target
                    end.first_s = time.perf_counter() - end.started
                    self._metrics.time_to_first_token.labels(
                        end.endpoint, target.adapter_label, target.version_label
                    ).observe(end.first_s)
                if chunk:
                    yield chunk
        except GatewayError as exc:
            # Headers are gone already: end the stream with an error event, then close.
            end.status = exc.status_code
            log.warning("request %s: stream failed: %s", request_id, exc.message)
            yield sse_error(exc)
        finally:
            end.finish()

    def _record(self, endpoint: str, target: Target, status: int, started: float) -> None:
        labels = (endpoint, target.adapter_label, target.version_label, status_class(status))
        self._metrics.requests.labels(*labels).inc()
        self._metrics.request_duration.labels(*labels).observe(time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class ModelRename:
    """Swaps the engine's name for the client's in an answer's `"model"` field."""

    engine: tuple[bytes, bytes]
    client: tuple[bytes, bytes]

    @classmethod
    def of(cls, engine_model: str, client_model: str) -> ModelRename | None:
        """The swap from `engine_model` to `client_model`; None when they are the same."""
        if engine_model == client_model:
            return None
        old, new = json.dumps(engine_model).encode(), json.dumps(client_model).encode()
        # vLLM writes compact JSON; other OpenAI-compatible servers put a space after `:`.
        return cls((b'"model":' + old, b'"model": ' + old), (b'"model":' + new, b'"model": ' + new))

    def apply(self, data: bytes) -> bytes:
        """`data` with the engine's name in `"model"` replaced by the client's."""
        compact, spaced = self.engine
        return data.replace(compact, self.client[0]).replace(spaced, self.client[1])


class _StreamEnd:
    """A streamed request's bookkeeping, done exactly once: when the relay ends, or when the
    response closes without ever starting it (the client left before the headers went)."""

    def __init__(
        self,
        service: OpenAIService,
        reply: UpstreamReply,
        lease: Lease,
        endpoint: str,
        target: Target,
        started: float,
        half: PairHalf | None = None,
        entry: Served | None = None,
        strip_usage: bool = False,
    ) -> None:
        self.service = service
        self.half = half
        self.entry = entry
        # The gateway asked the engine for the usage event the client did not ask for.
        self.strip_usage = strip_usage
        self.first_s: float | None = None
        # The answer's events are kept for the shadow pair or the response log's text.
        self._keep = half is not None or (entry is not None and entry.payload is not None)
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self.reply = reply
        self.lease = lease
        self.endpoint = endpoint
        self.target = target
        self.started = started
        # Until the relay says otherwise: the client went away before anything was sent.
        self.status = 499
        self._done = False

    def keep(self, chunk: bytes) -> None:
        """Keep the streamed answer when its text is needed (bounded)."""
        if self._keep and self._kept_bytes < MAX_BODY_CHARS * 4:
            self._kept.append(chunk)
            self._kept_bytes += len(chunk)

    def finish(self) -> None:
        """Release the engine connection and the adapter, and record the request."""
        if self._done:
            return
        self._done = True
        self.reply.close()
        self.lease.release()
        self.service._metrics.in_flight.dec()
        self.service._record(self.endpoint, self.target, self.status, self.started)
        kept = b"".join(self._kept)
        if self.entry is not None:
            self.entry.ttft_s = self.first_s
            self.service._log(self.entry, self.status, self.started, kept)
        if self.half is not None:
            elapsed = time.perf_counter() - self.started
            self.half.primary_done(self.status, kept, elapsed)

    def take_usage(self, chunk: bytes) -> bytes:
        """Keep the usage event of `chunk` for the response log; drop it from what the
        client gets when only the gateway asked for it."""
        found = usage_event(chunk)
        if found is None:
            return chunk
        start, end, event = found
        assert self.entry is not None
        self.entry.usage = event
        return chunk[:start] + chunk[end:] if self.strip_usage else chunk


def _model_entry(
    model_id: str, root: str, has_parent: bool, catalog: ModelCatalog
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": _CREATED,
        "owned_by": "lora-gateway",
        "root": root,
        "parent": catalog.base_model if has_parent else None,
    }


def decision_headers(decision: Decision) -> dict[str, str]:
    """What an `auto` response says about its route: name, confidence, how it was decided,
    and the keyword or pattern that matched (whether it counted or was vetoed)."""
    headers = {
        "x-route": decision.route,
        "x-route-confidence": f"{decision.confidence:.4f}",
        "x-route-method": decision.method,
        "x-route-reason": decision.reason,
    }
    if decision.rule is not None:
        # Header values are ASCII: anything else in a keyword is percent-encoded.
        headers["x-route-rule"] = quote(decision.rule.describe(), safe=" '()[]{}|^$:;,.=!?*+-_/\\")
    return headers


def _may_use(principal: Principal | None, route: str, base_model: str) -> bool:
    try:
        check_adapter_allowed(principal, route, base_model)
    except PermissionDenied:
        return False
    return True


def _ask_for_usage(payload: dict[str, Any]) -> bool:
    """Ask the engine for a stream's usage event; True when the client did not (the
    gateway then takes the event out of what the client gets)."""
    options = payload.get("stream_options")
    if options is None:
        payload["stream_options"] = {"include_usage": True}
        return True
    if isinstance(options, dict) and options.get("include_usage") is not True:
        payload["stream_options"] = {**options, "include_usage": True}
        return True
    return False


def usage_event(chunk: bytes) -> tuple[int, int, bytes] | None:
    """(start, end, JSON) of the usage-only event (no choices) in `chunk`, if it has one."""
    at = chunk.find(b'"usage"')
    while at >= 0:
        start = chunk.rfind(b"data:", 0, at)
        end = chunk.find(b"\n\n", at)
        if start >= 0:
            end = len(chunk) if end < 0 else end + 2
            event = chunk[start + 5 : end].strip()
            try:
                parsed = json.loads(event)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("choices") == [] and parsed.get("usage"):
                return start, end, event
        at = chunk.find(b'"usage"', at + 1)
    return None


def _failure_status(exc: BaseException) -> int:
    """The status recorded for a request that failed before the engine answered."""
    if isinstance(exc, GatewayError):
        return exc.status_code
    # 499: the client went away (the request task was cancelled), as nginx records it.
    return 499 if isinstance(exc, asyncio.CancelledError) else 500


def parse_body(raw: bytes, schema: type[BaseModel]) -> dict[str, Any]:
    """Decode a JSON object and check the fields the gateway reads; keep all others."""
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(invalid_json_message(exc.msg, exc.doc, exc.pos)) from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest("Request body is not valid JSON: it is not UTF-8 text.") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    try:
        schema.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc
    return payload


def sse_error(error: GatewayError) -> bytes:
    """An SSE event carrying OpenAI's error shape (the official clients raise on it)."""
    body = error_body(error.message, error.error_type, error.param, error.code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def prompt_text(payload: dict[str, Any]) -> str:
    """The request's messages or prompt for the access log, cut to `PROMPT_CHARS`."""
    asked = payload.get("messages", payload.get("prompt"))
    return json.dumps(asked, ensure_ascii=False)[:PROMPT_CHARS]
