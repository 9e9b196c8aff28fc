"""Optional OpenTelemetry traces: a server span per request and a client span per engine
call, exported over OTLP/HTTP when `GATEWAY_OTLP_ENDPOINT` is set; nothing at all otherwise.

A client's `traceparent` makes the request's span a child of the client's trace; each engine
call sends its own `traceparent` to vLLM, so an engine started with
`--otlp-traces-endpoint` joins the same trace. The gateway keeps its own tracer provider
(not the process-wide one), so nothing else in the process is traced by accident.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observability.logs import ACCESS_FIELDS

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

SERVICE_NAME = "lora-gateway"


class Tracing:
    """The gateway's tracer: spans for requests and engine calls."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("lora_gateway")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def to_exporter(cls, exporter: SpanExporter, batch: bool = True) -> Tracing:
        """Spans go to `exporter` (in batches, or one at a time for tests)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still apply over this default.
        provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def to_otlp(cls, endpoint: str) -> Tracing:
        """Spans exported over OTLP/HTTP to `endpoint` (its `/v1/traces`)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = endpoint.rstrip("/") + "/v1/traces"
        log.info("tracing: exporting spans to %s", url)
        return cls.to_exporter(OTLPSpanExporter(endpoint=url))

    def start_server(self, scope: Scope) -> tuple[Span, Any]:
        """The span of an incoming request (a child of the client's `traceparent`, if any)
        and the context token that makes it current."""
        from opentelemetry import context
        from opentelemetry.trace import SpanKind, set_span_in_context

        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier)
        method, path = scope.get("method", ""), scope.get("path", "")
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        token = context.attach(set_span_in_context(span, parent))
        return span, token

    def start_upstream(self, url: str, path: str, headers: dict[str, str]) -> Span:
        """The span of one engine call, a child of the current request's; its trace
        context is written into `headers`."""
        from opentelemetry.trace import SpanKind, set_span_in_context

        span = self.tracer.start_span(
            f"upstream POST {path}",
            kind=SpanKind.CLIENT,
            attributes={"server.address": url, "url.path": path},
        )
        self._propagator.inject(headers, context=set_span_in_context(span))
        return span

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        self.provider.shutdown()


def end_span(span: Span, status: int | None, error: BaseException | None = None) -> None:
    """Finish `span` with the HTTP status it ended on (5xx and failures mark it an error)."""
    from opentelemetry.trace import Status, StatusCode

    if status:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    elif status is None or status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=time.time_ns())


class TracingMiddleware:
    """A server span around every HTTP request, with what serving learned about it."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import context

        span, token = self.tracing.start_server(scope)
        status: int | None = None

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            error = exc
            raise
        finally:
            state = scope.get("state", {})
            for key, value in (state.get(ACCESS_FIELDS) or {}).items():
                if key != "prompt" and value is not None:
                    span.set_attribute(f"gateway.{key}", value)
            if "request_id" in state:
                span.set_attribute("gateway.request_id", state["request_id"])
            end_span(span, status, error)
            context.detach(token)
