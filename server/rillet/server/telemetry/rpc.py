"""RPC spans and metrics from Rillet's own handler guard (RPC conventions v1.44.0, see semconv.py).

Why not opentelemetry-instrumentation-grpc's aio interceptor: it breaks handlers that are coroutines using
`context.write` (contrib#3066; the auth gate's refusals are coroutines), emits no metrics, and uses the old attribute
names; and any server interceptor puts every call through grpc.aio's interceptor chain (35-45 µs to first token
here: transport/handlers.py). This one is a transport.handlers.Guard: it wraps each handler as services register,
whichever kind of behavior it has, in its own style:

- one SERVER span per call named `{rpc.method}` ("rillet.v1.InferenceService/Session"), its parent the W3C context
  in the call's `traceparent`/`tracestate` metadata (the globally configured propagator extracts it);
- the span is current in the handler's task for the whole call, so everything the call does (the session's
  tasks, which inherit the task's context, its log lines) belongs to it;
- `rpc.response.status_code` is the status name; only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
  UNAVAILABLE and DATA_LOSS make the span an error: CANCELLED (the client went away) and client errors do not;
- `rpc.server.call.duration` for every call, and `rillet.server.active_sessions` for the streaming ones.

Health and reflection calls are passed through untouched (probes would otherwise dominate traces and cost time).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from rillet.server.telemetry import semconv as sc
from rillet.server.telemetry.instruments import Instruments
from rillet.server.transport.handlers import behavior, with_behavior

log = logging.getLogger(__name__)

Rq = TypeVar("Rq")
Rs = TypeVar("Rs")

UNTRACED_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
"""Services whose calls get no span and no measurement."""


def _peer(peer: str) -> tuple[str, int | None]:
    """network.peer.address and .port from grpc's peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:...")."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return rest or peer, None
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def _status(error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status name the call ended with."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        return "OK" if error is None else "UNKNOWN"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"  # gRPC's answer to an exception a handler let escape


class _Call:
    """One call's span and measurements."""

    __slots__ = ("_instruments", "_method", "_started", "_streaming", "_token", "span")

    def __init__(
        self,
        owner: RpcTelemetry,
        method: str,
        streaming: bool,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self._instruments = owner.instruments
        self._method = method
        self._streaming = streaming
        self._started = time.perf_counter()
        self.span: Span | None = None
        self._token: object | None = None
        if owner.tracer is not None:
            metadata = context.invocation_metadata() or ()
            carrier = {key: value for key, value in metadata if isinstance(value, str)}
            parent = propagate.extract(carrier)
            attributes: dict[str, Any] = {**owner.span_attributes, sc.RPC_METHOD: method}
            address, port = _peer(context.peer())
            attributes[sc.NETWORK_PEER_ADDRESS] = address
            if port is not None:
                attributes[sc.NETWORK_PEER_PORT] = port
            self.span = owner.tracer.start_span(method, parent, kind=SpanKind.SERVER, attributes=attributes)
            self._token = otel_context.attach(trace.set_span_in_context(self.span, parent))
        if streaming:
            self._instruments.active_sessions.add((method,), 1)

    def end(self, error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        status = _status(error, context)
        failed = status in sc.GRPC_SERVER_ERROR_CODES
        values = ("grpc", self._method, status, status if failed else "")  # instruments.RPC_KEY's
        self._instruments.rpc_duration.record(values, time.perf_counter() - self._started)
        if self._streaming:
            self._instruments.active_sessions.add((self._method,), -1)
        span = self.span
        if span is None:
            return
        span.set_attribute(sc.RPC_RESPONSE_STATUS_CODE, status)
        if failed:
            span.set_attribute(sc.ERROR_TYPE, status)
            details = context.details() if isinstance(error, grpc.aio.AbortError) else None
            span.set_status(Status(StatusCode.ERROR, details if isinstance(details, str) else None))
            if error is not None and not isinstance(error, grpc.aio.AbortError | asyncio.CancelledError):
                span.record_exception(error)
        span.end()
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]


def _begin(
    owner: RpcTelemetry, method: str, streaming: bool, context: grpc.aio.ServicerContext[Any, Any]
) -> _Call | None:
    """The call's telemetry, or None when making it failed: a telemetry bug must never fail a call (logged once)."""
    try:
        return _Call(owner, method, streaming, context)
    except Exception:
        _log_once("begin")
        return None


def _end(call: _Call | None, error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if call is None:
        return
    try:
        call.end(error, context)
    except Exception:
        _log_once("end")


_reported: set[str] = set()


def _log_once(where: str) -> None:
    if where not in _reported:
        _reported.add(where)
        log.exception("telemetry: the RPC guard failed (%s); the call goes on", where)


class RpcTelemetry:
    """Wraps every call of the traced services in a server span and measures it. Compose it first (outermost)."""

    def __init__(self, tracer: Tracer | None, instruments: Instruments, *, host: str = "", port: int = 0) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.span_attributes: dict[str, Any] = {sc.RPC_SYSTEM_NAME: "grpc"}
        if host:
            self.span_attributes[sc.SERVER_ADDRESS] = host
            if port:
                self.span_attributes[sc.SERVER_PORT] = port

    def guard(self, method: str, handler: grpc.RpcMethodHandler[Rq, Rs]) -> grpc.RpcMethodHandler[Rq, Rs]:
        """`handler` of `method` ("/package.Service/Method") traced and measured; untraced services' as they are."""
        if method.split("/")[1] in UNTRACED_SERVICES:
            return handler
        return self._wrap(handler, method.lstrip("/"))

    def _wrap(self, handler: grpc.RpcMethodHandler[Rq, Rs], method: str) -> grpc.RpcMethodHandler[Rq, Rs]:
        served = behavior(handler)
        streaming = handler.response_streaming

        if inspect.isasyncgenfunction(served):

            async def traced_stream(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                call = _begin(self, method, streaming, context)
                error: BaseException | None = None
                try:
                    async for response in served(request, context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _end(call, error, context)

            return with_behavior(handler, traced_stream)

        async def traced(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _begin(self, method, streaming, context)
            error: BaseException | None = None
            try:
                return await served(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _end(call, error, context)

        return with_behavior(handler, traced)
