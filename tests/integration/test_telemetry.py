"""`rillet serve` exporting OTLP/gRPC to a real OTLP receiver run here, driven by the SDK; Prometheus scraped over HTTP.

The receiver is a grpc.aio server implementing opentelemetry-proto's TraceService and MetricsService: what it gets
is exactly what a collector would get. The server is the real process (the synthetic TEST engine serves text); the
flush test drives the entrypoint's Telemetry in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from rillet.client import Client, FinishReason, NotFoundError, TokenDelta
from rillet.server import types as domain
from rillet.server.config import TelemetryConfig
from rillet.server.telemetry import semconv as sc
from rillet.server.telemetry.plan import Exports
from rillet.server.telemetry.runtime import Telemetry
from tests.conftest import eventually

GENERATE = "rillet.v1.InferenceService/Generate"
SESSION = "rillet.v1.InferenceService/Session"


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(item: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in item.attributes}


def assert_has(item: Any, expected: dict[str, Any]) -> None:
    got = attributes(item)
    assert {key: got.get(key) for key in expected} == expected


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC receiver keeping every span and every metric export it gets."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.metrics: list[Metric] = []

    async def Export(self, request: Any, context: Any) -> Any:  # both services have one method of this name
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for resource in request.resource_spans:
                assert attributes(resource.resource)["service.name"] == "rillet"
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                self.metrics.extend(scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]

    def histogram(self, name: str) -> list[Any]:
        """The data points of the latest export of histogram `name` (cumulative: the latest holds everything)."""
        exports = [m for m in self.metrics if m.name == name]
        return list(exports[-1].histogram.data_points) if exports else []


@dataclass
class Served:
    process: asyncio.subprocess.Process
    port: int
    prometheus_port: int
    log: list[str] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    found = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield found, port
    await server.stop(None)


@contextlib.asynccontextmanager
async def serve(*flags: str, **env: str) -> AsyncIterator[Served]:
    """`rillet serve` (synthetic text unless flags say otherwise) with a Prometheus endpoint; SIGTERM at the end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--prometheus-port", "0", *flags,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "200", **env},
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    port = prometheus_port = 0
    while not port:
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=60)).decode()
        assert line, f"the server exited before serving: {log}"
        log.append(line)
        if match := re.search(r"prometheus metrics on http://[\d.]+:(\d+)/metrics", line):
            prometheus_port = int(match.group(1))
        if match := re.search(r"serving .* on [\d.]+:(\d+)", line):
            port = int(match.group(1))
    assert prometheus_port

    async def drain() -> None:  # keep reading so that the server never blocks on a full pipe
        assert process.stderr is not None
        while line := await process.stderr.readline():
            log.append(line.decode())

    draining = asyncio.create_task(drain())
    try:
        yield Served(process, port, prometheus_port, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining


@pytest.fixture
async def served(receiver: tuple[Receiver, int]) -> AsyncIterator[Served]:
    _, otlp_port = receiver
    flags = ("--speech-engine", "none", "--otlp-endpoint", f"http://127.0.0.1:{otlp_port}")
    async with serve(*flags, RILLET_SYNTHETIC__TOKENS_PER_SECOND="100") as served:
        yield served


@pytest.fixture
def client_spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.mark.timeout(90)
async def test_span_tree_two_traces_in_one_session_cancel_and_ttft_over_otlp_and_prometheus(
    receiver: tuple[Receiver, int], served: Served, client_spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    found, _ = receiver
    provider, client_exporter = client_spans
    tracer = provider.get_tracer("pipeline")
    async with Client.connect(f"127.0.0.1:{served.port}", tracing=True, tracer_provider=provider) as client:
        # 1. A one-shot Generate: client span → RPC span → request span.
        one_shot = await client.generate("trace me", max_tokens=4, temperature=0.5, seed=7).collect()
        assert one_shot.finished.reason is FinishReason.LENGTH
        # 2. One session, two requests in two different traces (the caller's current span when each starts),
        #    a third cancelled, a fourth refused (unknown model).
        async with client.session() as session:
            with tracer.start_as_current_span("pipeline A") as a:
                first = await session.generate("in trace A", max_tokens=3)
            with tracer.start_as_current_span("pipeline B") as b:
                second = await session.generate("in trace B", max_tokens=3)
            assert (await first.collect()).finished.reason is FinishReason.LENGTH
            assert (await second.collect()).finished.reason is FinishReason.LENGTH
            long = await session.generate("cancel me", max_tokens=1000)
            events = aiter(long)
            assert isinstance(await anext(events), TokenDelta)
            await session.cancel(long.request_id)
            assert [e async for e in events][-1].reason is FinishReason.CANCELLED  # type: ignore[union-attr]
            with pytest.raises(NotFoundError):
                await (await session.generate("nowhere", model="no-such-model")).collect()
            await session.close()
        # 3. A one-shot stream the client abandons: CANCELLED, which is not a server error.
        abandoned = client.generate("abandon me", max_tokens=1000)
        async with abandoned:
            async for _ in abandoned:
                break

    requests = ("trace me", "in trace A", "in trace B", "cancel me", "nowhere", "abandon me")  # a span each
    await eventually(lambda: len(found.named(GENERATE)) == 2 and len(found.named(SESSION)) == 1, timeout=15)
    await eventually(lambda: sum(s.kind == Span.SPAN_KIND_INTERNAL for s in found.spans) == len(requests), timeout=15)
    internal = [s for s in found.spans if s.kind == Span.SPAN_KIND_INTERNAL]
    client_side = {s.name: s for s in client_exporter.get_finished_spans() if s.kind.name == "CLIENT"}

    # The one-shot tree: the SDK's CLIENT span is the parent of the server's RPC span, the parent of the request.
    client_generate = next(s for s in client_exporter.get_finished_spans() if s.name == GENERATE)
    rpc = next(s for s in found.named(GENERATE) if s.parent_span_id == client_generate.context.span_id.to_bytes(8))
    assert rpc.trace_id == client_generate.context.trace_id.to_bytes(16)
    assert rpc.kind == Span.SPAN_KIND_SERVER
    assert_has(rpc, {sc.RPC_SYSTEM_NAME: "grpc", sc.RPC_METHOD: GENERATE, sc.RPC_RESPONSE_STATUS_CODE: "OK"})
    request = next(s for s in internal if s.parent_span_id == rpc.span_id)
    assert request.name == "text_completion synthetic-test"
    assert request.trace_id == rpc.trace_id
    assert [(link.span_id, attributes(link)) for link in request.links] == [(rpc.span_id, {sc.RILLET_LINK_KIND: "rpc"})]
    got = attributes(request)
    assert_has(
        request,
        {
            sc.GEN_AI_OPERATION_NAME: "text_completion",
            sc.GEN_AI_PROVIDER_NAME: "synthetic",
            sc.GEN_AI_REQUEST_MODEL: "synthetic-test",
            sc.GEN_AI_REQUEST_MAX_TOKENS: 4,
            sc.GEN_AI_REQUEST_TEMPERATURE: 0.5,
            sc.GEN_AI_REQUEST_SEED: 7,
            sc.GEN_AI_REQUEST_STREAM: True,
            sc.GEN_AI_USAGE_INPUT_TOKENS: 2,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 4,
            sc.GEN_AI_RESPONSE_FINISH_REASONS: ["length"],
        },
    )
    assert 0 < got[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] < (request.end_time_unix_nano - request.start_time_unix_nano)
    assert [e.name for e in request.events] == [sc.EVENT_ADMITTED, sc.EVENT_FIRST_TOKEN]
    assert sc.GEN_AI_INPUT_MESSAGES not in got  # prompt text only with capture_content
    assert request.status.code == Status.STATUS_CODE_UNSET

    # Two traces in one session: each request's parent is its caller's span; both link to the one Session RPC span.
    session_rpc = found.named(SESSION)[0]
    assert session_rpc.parent_span_id == client_side[SESSION].context.span_id.to_bytes(8)
    for caller in (a, b):
        caller_context = caller.get_span_context()
        span = next(s for s in internal if s.parent_span_id == caller_context.span_id.to_bytes(8))
        assert span.trace_id == caller_context.trace_id.to_bytes(16) != session_rpc.trace_id
        assert [link.span_id for link in span.links] == [session_rpc.span_id]

    # The cancelled request: its own span, ended with the cancel event, not an error. Its parent is the RPC span
    # (no caller span was current when it started).
    in_session = [s for s in internal if s.parent_span_id == session_rpc.span_id]
    cancelled = next(s for s in in_session if attributes(s)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["cancelled"])
    assert cancelled.events[-1].name == sc.EVENT_CANCELLED
    assert cancelled.status.code == Status.STATUS_CODE_UNSET
    assert sc.ERROR_TYPE not in attributes(cancelled)
    # The refused one: an error, with the canonical code as error.type and the reason beside it.
    refused = next(s for s in in_session if s.status.code == Status.STATUS_CODE_ERROR)
    assert_has(refused, {sc.ERROR_TYPE: "NOT_FOUND", sc.RILLET_ERROR_REASON: "MODEL_NOT_FOUND"})
    assert refused.name == "text_completion no-such-model"
    # The abandoned one-shot call: CANCELLED, and not an error (RPC conventions v1.44.0).
    abandoned_rpc = next(s for s in found.named(GENERATE) if s is not rpc)
    assert attributes(abandoned_rpc)[sc.RPC_RESPONSE_STATUS_CODE] == "CANCELLED"
    assert abandoned_rpc.status.code == Status.STATUS_CODE_UNSET
    assert attributes(session_rpc)[sc.RPC_RESPONSE_STATUS_CODE] == "OK"

    # The TTFT histogram over OTLP: one point per model, the advised buckets, every successful text request in it.
    def ttft_count() -> int:
        return sum(p.count for p in found.histogram(sc.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN))

    await eventually(lambda: ttft_count() == 3, timeout=15)  # "trace me", "in trace A", "in trace B"
    (point,) = found.histogram(sc.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN)
    assert list(point.explicit_bounds) == list(sc.TIME_TO_FIRST_TOKEN_BUCKETS)
    assert attributes(point) == {
        sc.GEN_AI_OPERATION_NAME: "text_completion",
        sc.GEN_AI_PROVIDER_NAME: "synthetic",
        sc.GEN_AI_REQUEST_MODEL: "synthetic-test",
    }
    assert 0 < point.sum < 3 * 1.0

    # The Prometheus endpoint, scraped and parsed with prometheus_client's own parser.
    families = scrape(served.prometheus_port)
    ttft = families["gen_ai_server_time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    counts = [s.value for s in ttft.samples if s.name.endswith("_count")]
    assert counts == [3.0]
    errors = families["rillet_server_request_errors"]
    assert [(s.labels["error_type"], s.labels["rillet_error_reason"], s.value) for s in errors.samples] == [
        ("NOT_FOUND", "MODEL_NOT_FOUND", 1.0)
    ]
    outcomes = {s.labels["rillet_request_outcome"]: s.value for s in families["rillet_server_requests"].samples}
    assert outcomes == {"finished": 3.0, "cancelled": 2.0, "failed": 1.0}


class _Engine:
    name, slots, active = "synthetic", 4, 0


def _lifecycles(observer: Any, count: int) -> None:
    """`count` finished 4-token generations told to `observer`, as the session tells them."""
    model = domain.ModelInfo("synthetic-test", domain.ModelKind.TEXT_GENERATION, "synthetic")
    result = domain.Finished(domain.FinishReason.LENGTH, domain.Usage(1, 4), domain.Timings(0.0, 0.01, 0.02, 0.05))
    for index in range(count):
        request = observer.request(domain.Start(f"r{index}", domain.GenerateSpec(prompt="p", max_tokens=4)))
        request.queued(model, domain.GenerationRequest(f"r{index}", model.name, "p", 4), None)
        request.admitted()
        request.first_output()
        request.finished(result)


@pytest.mark.timeout(60)
async def test_force_flush_returns_once_spans_and_delta_histograms_are_exported(
    receiver: tuple[Receiver, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    found, port = receiver
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # the exporter child's processor would wait 10 minutes
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # and so would the metric reader
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    config = TelemetryConfig(otlp_endpoint=f"http://127.0.0.1:{port}")
    telemetry = Telemetry(config, Exports(otlp_traces=True, otlp_metrics=True))
    try:
        telemetry.watch([_Engine()])

        def ttft() -> tuple[int, list[int]]:
            (metric,) = [m for m in found.metrics if m.name == sc.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN][-1:]
            return metric.histogram.aggregation_temporality, [p.count for p in metric.histogram.data_points]

        for count, spans in ((3, 3), (2, 5)):
            _lifecycles(telemetry.observer, count)
            assert await asyncio.to_thread(telemetry.force_flush)
            # No waiting: once force_flush returned, the receiver holds every span and this interval's histograms.
            assert sum(s.name == "text_completion synthetic-test" for s in found.spans) == spans
            assert ttft() == (AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA, [count])
    finally:
        await asyncio.to_thread(telemetry.shutdown)
