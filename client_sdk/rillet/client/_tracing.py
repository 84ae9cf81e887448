"""Optional OpenTelemetry in the SDK: the caller's context goes with every call and request; optional client spans.

With `opentelemetry-api` installed (the `otel` extra), every call carries the current context in its metadata
(the globally configured propagator: W3C `traceparent`/`tracestate` by default) and every session request carries
it in its own W3C `trace_context`, so the server's spans join the caller's trace. With `Client.connect(...,
tracing=True)` each call also gets a CLIENT span (RPC conventions v1.44.0: `rpc.system.name`, `rpc.method`,
`rpc.response.status_code`, `server.address`/`server.port`) from the global TracerProvider, and the server's RPC span
becomes its child. Without the package, all of this is skipped at no cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
    """Whether opentelemetry-api is installed."""
except ImportError:  # the otel extra is not installed
    AVAILABLE = False

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

SERVICE = "rillet.v1.InferenceService"
CLIENT_ERROR_CODES = frozenset({"OK"})
"""On client spans every status but OK is an error (v1.44.0 docs/rpc/grpc.md)."""


def tracer(provider: TracerProvider | None = None) -> Tracer:
    """The SDK's tracer, from `provider` or the global TracerProvider; ImportError without opentelemetry-api."""
    if not AVAILABLE:
        raise ImportError("client spans need OpenTelemetry: pip install 'rillet-client[otel]'")
    schema = "https://opentelemetry.io/schemas/1.44.0"
    return trace.get_tracer("rillet.client", schema_url=schema, tracer_provider=provider)


def server_attributes(target: str) -> dict[str, Any]:
    """server.address and server.port from a "host:port" target (the whole target as address otherwise)."""
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and host and "/" not in host and "," not in host:
        return {"server.address": host.strip("[]"), "server.port": int(port)}
    return {"server.address": target}


def request_context() -> tuple[str, str]:
    """The current context as W3C (traceparent, tracestate) for a session request; ("", "") without one."""
    if not AVAILABLE:
        return "", ""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")


class CallTrace:
    """One call's client span (with tracing on) and the metadata that carries its context to the server.

    The context is the caller's current one, or the W3C `traceparent`/`tracestate` given (a request's options).
    """

    __slots__ = ("metadata", "span")

    def __init__(
        self,
        tracer: Tracer | None,
        method: str,
        attributes: dict[str, Any],
        metadata: tuple[tuple[str, str], ...],
        *,
        traceparent: str = "",
        tracestate: str = "",
    ) -> None:
        self.span: Span | None = None
        self.metadata: tuple[tuple[str, str], ...]
        given = {"traceparent": traceparent} if traceparent else {}
        if traceparent and tracestate:
            given["tracestate"] = tracestate
        if not AVAILABLE:
            self.metadata = metadata + tuple(given.items())
            return
        context = TraceContextTextMapPropagator().extract(given) if given else None
        if tracer is not None:
            name = f"{SERVICE}/{method}"
            self.span = tracer.start_span(
                name,
                context=context,
                kind=SpanKind.CLIENT,
                attributes={"rpc.system.name": "grpc", "rpc.method": name, **attributes},
            )
            context = trace.set_span_in_context(self.span, context)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        self.metadata = metadata + tuple(carrier.items())

    def end(self, status: str) -> None:
        """End the span with the call's status name ("OK", "CANCELLED", ...)."""
        span = self.span
        if span is None:
            return
        self.span = None
        span.set_attribute("rpc.response.status_code", status)
        if status not in CLIENT_ERROR_CODES:
            span.set_attribute("error.type", status)
            span.set_status(Status(StatusCode.ERROR))
        span.end()
