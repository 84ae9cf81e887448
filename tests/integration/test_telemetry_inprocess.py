"""Telemetry wired into an in-process server (in-memory exporters): speech and chained spans, the handler task's
context, composition with the auth gate, and the metrics only these engines produce."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from rillet.client import Client, UnauthenticatedError
from rillet.server.app import RilletServer
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.base import Engine
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.telemetry import semconv as sc
from rillet.server.telemetry.edge import EdgeTelemetry
from rillet.server.telemetry.fastpath.histograms import Histograms, WithHistograms
from rillet.server.telemetry.fastpath.spans import RequestTracer, into
from rillet.server.telemetry.instruments import Instruments
from rillet.server.telemetry.requests import TelemetryObserver
from rillet.server.telemetry.rpc import RpcTelemetry
from tests.conftest import eventually
from tests.doubles import EchoSpeechEngine


@dataclass
class Traced:
    server: RilletServer
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def histogram(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


class Reader(WithHistograms, InMemoryMetricReader):
    """An in-memory reader whose collections carry the Histograms too, as the server's readers'."""


async def start(**settings: Any) -> Traced:
    spans = InMemorySpanExporter()
    processor = SimpleSpanProcessor(spans)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    histograms = Histograms(InstrumentationScope("test"))
    metrics = Reader(histograms)
    instruments = Instruments(MeterProvider(metric_readers=[metrics]).get_meter("test"), histograms)
    tracer = tracer_provider.get_tracer("test")
    requests = RequestTracer(tracer_provider, InstrumentationScope("test"), into(processor, tracer_provider.resource))
    engines: list[Engine] = [SyntheticEngine(SyntheticConfig(tokens_per_second=400)), EchoSpeechEngine()]
    server = RilletServer(
        Settings(port=0, **settings),
        engines,
        observer=TelemetryObserver(requests, instruments),
        guards=[RpcTelemetry(tracer, instruments)],
        edge_observer=EdgeTelemetry(tracer, instruments.meter),
    )
    await server.start()
    return Traced(server, spans, metrics)


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    found = await start()
    yield found
    await found.server.stop(grace_s=0)


async def test_speech_and_a_chained_synthesis_get_spans_of_their_own_linked_to_their_source(traced: Traced) -> None:
    async with Client.connect(f"127.0.0.1:{traced.server.port}") as client, client.session() as session:
        generation = await session.generate("speak this", max_tokens=6)
        chained = await session.synthesize(text_from=generation)
        alone = await session.synthesize("Plain words.")
        await generation.collect()
        await chained.collect()
        await alone.collect()
        await session.close()
    await eventually(lambda: len(traced.finished()) == 4)
    spans = {s.name: s for s in traced.finished() if s.name != "rillet.v1.InferenceService/Session"}
    rpc = next(s for s in traced.finished() if s.kind is SpanKind.SERVER)
    text = next(s for s in traced.finished() if s.name == "text_completion synthetic-test")
    speech = [s for s in traced.finished() if s.name == "text_to_speech echo-voice"]
    assert len(spans) == 2
    assert len(speech) == 2
    # The handler task's context was the RPC span when the session read each start: every request is its child.
    assert all(s.parent is not None and s.parent.span_id == rpc.context.span_id for s in [text, *speech])
    chain = next(s for s in speech if len(s.links) == 2)
    assert [(link.context.span_id, dict(link.attributes or {})) for link in chain.links] == [
        (rpc.context.span_id, {sc.RILLET_LINK_KIND: "rpc"}),
        (text.context.span_id, {sc.RILLET_LINK_KIND: "text_source"}),
    ]
    for span in speech:
        attributes: Any = span.attributes
        assert attributes[sc.GEN_AI_OPERATION_NAME] == "text_to_speech"
        assert attributes[sc.GEN_AI_OUTPUT_TYPE] == "speech"
        assert attributes[sc.RILLET_OUTPUT_AUDIO_SECONDS] > 0
        assert [e.name for e in span.events] == [sc.EVENT_ADMITTED, sc.EVENT_FIRST_AUDIO]
    (ttfa,) = traced.histogram(sc.RILLET_TIME_TO_FIRST_AUDIO_METRIC)
    assert ttfa.count == 2
    assert dict(ttfa.attributes) == {
        sc.GEN_AI_OPERATION_NAME: "text_to_speech",
        sc.GEN_AI_PROVIDER_NAME: "echo-speech",
        sc.GEN_AI_REQUEST_MODEL: "echo-voice",
    }
    batches = traced.histogram(sc.RILLET_ENGINE_BATCH_SIZE)
    assert batches == []  # nobody subscribed the engines (the entrypoint's Telemetry.watch does)


async def test_the_auth_gate_still_decides_and_its_refusal_is_measured_not_an_error() -> None:
    traced = await start(security={"tenants": {"acme": {"tokens": ["s3cret-token-acme"]}}})
    try:
        async with Client.connect(f"127.0.0.1:{traced.server.port}") as client:
            with pytest.raises(UnauthenticatedError):
                await client.generate("no token", max_tokens=2).collect()
        async with Client.connect(f"127.0.0.1:{traced.server.port}", token="s3cret-token-acme") as client:
            assert (await client.generate("token", max_tokens=2).collect()).finished.usage.output_tokens == 2
            # (the channel stays open until the server ended the call: closing it at once may cancel the call)
            await eventually(lambda: len([s for s in traced.finished() if s.kind is SpanKind.SERVER]) == 2)
        refused, served = sorted(
            (s for s in traced.finished() if s.kind is SpanKind.SERVER), key=lambda s: s.start_time or 0
        )
        assert refused.attributes is not None
        assert served.attributes is not None
        assert refused.attributes[sc.RPC_RESPONSE_STATUS_CODE] == "UNAUTHENTICATED"
        assert refused.status.status_code is StatusCode.UNSET  # a client error, not the server's (RPC v1.44.0)
        assert served.attributes[sc.RPC_RESPONSE_STATUS_CODE] == "OK"
        requests = [s for s in traced.finished() if s.kind is SpanKind.INTERNAL]
        assert len(requests) == 1  # the refused call never reached the session
        codes = {
            dict(p.attributes)[sc.RPC_RESPONSE_STATUS_CODE]: p.count
            for p in traced.histogram(sc.RPC_SERVER_CALL_DURATION)
        }
        assert codes == {"UNAUTHENTICATED": 1, "OK": 1}
    finally:
        await traced.server.stop(grace_s=0)


async def test_a_websocket_session_gets_a_span_parented_by_its_handshake_and_its_requests_are_children() -> None:
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    from rillet.server.transport.websocket import SESSION_PATH
    from rillet.v1 import common_pb2, generation_pb2
    from rillet.v1 import inference_service_pb2 as pb

    traced = await start(websocket={"enabled": True, "port": 0, "allowed_origins": ["https://app.example"]})
    server = traced.server
    assert server.websocket is not None
    url = f"ws://127.0.0.1:{server.websocket.port}{SESSION_PATH}"
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    try:
        async with connect(url, additional_headers={"traceparent": TRACEPARENT}) as ws:
            params = generation_pb2.GenerateParams(text="hi", max_tokens=3)
            inherits = pb.StartGenerate(params=params)
            carries = pb.StartGenerate(params=params, trace_context=common_pb2.TraceContext(traceparent=own))
            await ws.send(pb.SessionRequest(request_id="a", start_generate=inherits).SerializeToString())
            await ws.send(pb.SessionRequest(request_id="b", start_generate=carries).SerializeToString())
            await ws.send(b"")
            async for _ in ws:
                pass
        with pytest.raises(Exception, match="403"):
            async with connect(url, origin=Origin("https://evil.example")):
                pass
        await eventually(lambda: len(traced.finished()) == 3)
    finally:
        await server.stop(grace_s=0)
    session = next(s for s in traced.finished() if s.kind is SpanKind.SERVER)
    attributes: Any = session.attributes
    assert session.name == "rillet.v1.InferenceService/Session"
    assert attributes[sc.RPC_SYSTEM_NAME] == "websocket"
    assert attributes[sc.RPC_RESPONSE_STATUS_CODE] == "OK"
    assert session.parent is not None
    assert f"{session.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    a, b = (s for s in traced.finished() if s.kind is not SpanKind.SERVER)
    by_trace = {f"{s.context.trace_id:032x}": s for s in (a, b)}
    assert by_trace[TRACEPARENT.split("-")[1]].parent.span_id == session.context.span_id  # type: ignore[union-attr]
    assert own.split("-")[1] in by_trace  # a request's own trace context wins, as over gRPC
    (duration,) = traced.histogram("rillet.server.websocket.session.duration")
    assert duration.count == 1
    (refused,) = [p for p in traced.histogram("rillet.server.websocket.refused_handshakes")]
    assert refused.value == 1
    assert dict(refused.attributes) == {"http.response.status_code": 403}


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
