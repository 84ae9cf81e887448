"""gRPC's standard load reports (ORCA, gRFC A51): the out-of-band OpenRcaService stream and the per-call trailer.

The messages are xds.data.orca.v3's, from the vendored cncf/xds protos built into `xds/orca.binpb` by
scripts/gen_protos.py and loaded here into a descriptor pool of their own: nothing registers xds/* files in
protobuf's default pool, where the `xds-protos` package would clash with them. gRPC Python has no ORCA API of its own
(grpcio 1.85), so the method is served through a generic handler, as any server may.

What a report says (load.py measures it): `application_utilization` is the busiest engine's utilization (slots, queue
and KV cache, in [0, 1]), `rps_fractional` the requests ended per second, `cpu_utilization` the process's CPU share;
`utilization` holds each engine's, and `named_metrics` the requests running and waiting and the KV cache use, in all
and per engine ("<engine>.running", ...). gRPC's weighted_round_robin weighs each backend by rps / utilization.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from rillet.server.config import LoadConfig
from rillet.server.errors import InvalidArgument, ResourceExhausted
from rillet.server.load import LoadBoard, ServerLoad
from rillet.server.reasons import Reason
from rillet.server.transport.servicer import abort

__all__ = ["SERVICE_NAME", "TRAILER", "OrcaService", "StreamSlots", "add_to_server", "report"]

SERVICE_NAME = "xds.service.orca.v3.OpenRcaService"
TRAILER = "endpoint-load-metrics-bin"
"""The per-call report's trailing metadata key (gRFC A51): the serialized OrcaLoadReport, sent as binary."""
TRAILER_REFRESH_S = 0.25
"""Per-call reports reuse one serialized report for this long: a call's trailer costs no snapshot of its own."""


def _message_classes() -> tuple[Any, Any]:
    data = resources.files("rillet.server.transport").joinpath("xds/orca.binpb").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    report_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("xds.data.orca.v3.OrcaLoadReport"))
    request_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("xds.service.orca.v3.OrcaLoadReportRequest")
    )
    return report_class, request_class


OrcaLoadReport, OrcaLoadReportRequest = _message_classes()


def report(load: ServerLoad) -> Message:
    """The OrcaLoadReport of `load`."""
    message: Any = OrcaLoadReport(
        cpu_utilization=load.cpu_utilization,
        application_utilization=load.utilization,
        rps_fractional=load.requests_per_second,
    )
    named = message.named_metrics
    named["running"] = float(sum(e.running for e in load.engines))
    named["waiting"] = float(sum(e.waiting for e in load.engines))
    kv = [e.kv_cache_utilization for e in load.engines if e.kv_cache_utilization is not None]
    if kv:
        named["kv_cache_utilization"] = max(kv)
    for engine in load.engines:
        message.utilization[engine.engine] = engine.utilization
        named[f"{engine.engine}.running"] = float(engine.running)
        named[f"{engine.engine}.waiting"] = float(engine.waiting)
        if engine.kv_cache_utilization is not None:
            named[f"{engine.engine}.kv_cache_utilization"] = engine.kv_cache_utilization
    result: Message = message
    return result


class StreamSlots:
    """A bound on long-lived report streams (ORCA and WatchLoad together): `take` or RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int, retry_after_s: float = 5.0) -> None:
        self._limit = limit
        self._retry_after_s = retry_after_s
        self.open = 0

    def take(self) -> None:
        if self.open >= self._limit:
            raise ResourceExhausted(
                f"{self._limit} load report streams are open, the server's limit; retry later",
                retry_after=self._retry_after_s,
                reason=Reason.LOAD_STREAM_LIMIT,
                metadata={"limit": str(self._limit)},
            )
        self.open += 1

    def give(self) -> None:
        self.open -= 1


class OrcaService:
    """StreamCoreMetrics: a report at once, then one every interval, until the client leaves or the server stops.

    The interval is the client's, raised to the configured minimum, as gRFC A51 asks of a server. A draining server
    goes on reporting (its health says NOT_SERVING, which takes it out of the clients' picks) until it stops; gRPC
    clients treat any end of the stream as an error and retry it with backoff.
    """

    def __init__(self, board: LoadBoard, config: LoadConfig, slots: StreamSlots) -> None:
        self._board = board
        self._min_interval_s = config.min_interval_s
        self._slots = slots
        self._trailer: tuple[tuple[str, bytes], ...] = ()
        self._trailer_at = -TRAILER_REFRESH_S

    async def StreamCoreMetrics(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            interval_s = self._interval(request)
            self._slots.take()
        except (InvalidArgument, ResourceExhausted) as error:
            await abort(context, error)
        try:
            while True:
                yield report(self._board.snapshot()).SerializeToString()
                await asyncio.sleep(interval_s)
        finally:
            self._slots.give()

    def trailer(self) -> tuple[tuple[str, bytes], ...]:
        """The per-call report, as trailing metadata (refreshed every TRAILER_REFRESH_S)."""
        now = time.monotonic()
        if now - self._trailer_at >= TRAILER_REFRESH_S:
            self._trailer = ((TRAILER, report(self._board.snapshot()).SerializeToString()),)
            self._trailer_at = now
        return self._trailer

    def _interval(self, request: bytes) -> float:
        message: Any = OrcaLoadReportRequest()
        try:
            message.ParseFromString(request)
        except DecodeError:
            raise InvalidArgument(
                "the message is not a valid OrcaLoadReportRequest", reason=Reason.UNDECODABLE_MESSAGE
            ) from None
        interval = message.report_interval
        asked = interval.seconds + interval.nanos / 1e9
        return max(float(asked), self._min_interval_s)


def add_to_server(service: OrcaService, server: grpc.aio.Server) -> None:
    """Register StreamCoreMetrics on `server` directly: open like grpc.health.v1 (transport/auth.py)."""
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(service.StreamCoreMetrics)
    handlers = {"StreamCoreMetrics": handler}  # raw bytes in and out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
