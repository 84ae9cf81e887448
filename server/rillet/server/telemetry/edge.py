"""Telemetry of the WebSocket edge (transport/websocket.py's EdgeObserver): a span per session and its metrics.

- one SERVER span per WebSocket session named `rillet.v1.InferenceService/Session`, as the gRPC call's, with
  `rpc.system.name` = "websocket" and `network.protocol.name` = "websocket"; its parent is the W3C context of the
  handshake's `traceparent`/`tracestate` headers (clients that can set headers), and it is current in the task that
  serves the session, so the session's request spans are its children unless a request carries its own context;
- `rillet.server.websocket.session.duration` (s) by status, `rillet.server.websocket.active_sessions`, and
  `rillet.server.websocket.refused_handshakes` by HTTP status (origin 403, capacity 503, path 404, protocol 400).

The requests inside a session are the server's Observer's (requests.py), whichever transport carries them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from rillet.server.telemetry import semconv as sc
from rillet.server.transport.websocket import NULL_EDGE_OBSERVER, EdgeCall, EdgeConnection

log = logging.getLogger(__name__)

SPAN_NAME = "rillet.v1.InferenceService/Session"
SYSTEM = "websocket"
NETWORK_PROTOCOL_NAME = "network.protocol.name"
SUBPROTOCOL = "rillet.websocket.subprotocol"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
SESSION_DURATION = "rillet.server.websocket.session.duration"
ACTIVE_SESSIONS = "rillet.server.websocket.active_sessions"
REFUSED_HANDSHAKES = "rillet.server.websocket.refused_handshakes"


class _Session:
    """One WebSocket session's span and measurements."""

    __slots__ = ("_owner", "_span", "_started", "_token")

    def __init__(self, owner: EdgeTelemetry, connection: EdgeConnection) -> None:
        self._owner = owner
        self._started = time.perf_counter()
        self._span: trace.Span | None = None
        self._token: object | None = None
        if owner.tracer is not None:
            parent = propagate.extract(dict(connection.headers.items()))
            attributes: dict[str, Any] = {
                sc.RPC_SYSTEM_NAME: SYSTEM,
                sc.RPC_METHOD: SPAN_NAME,
                NETWORK_PROTOCOL_NAME: "websocket",
                SUBPROTOCOL: connection.subprotocol,
            }
            if connection.peer is not None:
                attributes[sc.NETWORK_PEER_ADDRESS], attributes[sc.NETWORK_PEER_PORT] = connection.peer
            self._span = owner.tracer.start_span(SPAN_NAME, parent, kind=SpanKind.SERVER, attributes=attributes)
            self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        owner.active.add(1)

    def end(self, status: str) -> None:
        try:
            self._end(status)
        except Exception:
            log.exception("telemetry: ending a WebSocket session's span failed; the server goes on")

    def _end(self, status: str) -> None:
        owner = self._owner
        failed = status in sc.GRPC_SERVER_ERROR_CODES
        attributes = {sc.RPC_RESPONSE_STATUS_CODE: status, **({sc.ERROR_TYPE: status} if failed else {})}
        owner.duration.record(time.perf_counter() - self._started, attributes)
        owner.active.add(-1)
        if self._span is None:
            return
        self._span.set_attribute(sc.RPC_RESPONSE_STATUS_CODE, status)
        if failed:
            self._span.set_attribute(sc.ERROR_TYPE, status)
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]


class EdgeTelemetry:
    """The edge's EdgeObserver: spans from `tracer` (None: metrics only), instruments from `meter`."""

    def __init__(self, tracer: Tracer | None, meter: Meter) -> None:
        self.tracer = tracer
        self.duration = meter.create_histogram(
            SESSION_DURATION, unit="s", description="How long WebSocket sessions lasted, by the status they ended with"
        )
        self.active = meter.create_up_down_counter(
            ACTIVE_SESSIONS, unit="{session}", description="WebSocket sessions open now"
        )
        self._refused = meter.create_counter(
            REFUSED_HANDSHAKES, unit="{handshake}", description="WebSocket handshakes answered without a session"
        )

    def session(self, connection: EdgeConnection) -> EdgeCall:
        """The session's span, current in the calling task; a telemetry failure never fails the session."""
        try:
            return _Session(self, connection)
        except Exception:
            log.exception("telemetry: starting a WebSocket session's span failed; the session goes on untraced")
            return NULL_EDGE_OBSERVER.session(connection)

    def refused(self, status: int) -> None:
        self._refused.add(1, {HTTP_RESPONSE_STATUS_CODE: status})
