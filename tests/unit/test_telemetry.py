"""Telemetry units: the exports config and OTEL_* turn on, log lines with trace ids, observers that never raise."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, StatusCode

from rillet.server.config import LogFormat, TelemetryConfig
from rillet.server.errors import NotFound
from rillet.server.observer import Batching, StepReporter
from rillet.server.telemetry.fastpath.histograms import Histograms, WithHistograms
from rillet.server.telemetry.fastpath.spans import RequestTracer, into, readable, span_data
from rillet.server.telemetry.instruments import Instruments, Tally
from rillet.server.telemetry.logs import JsonFormatter, TraceIds
from rillet.server.telemetry.plan import Exports, exports
from rillet.server.telemetry.requests import TelemetryObserver
from rillet.server.types import (
    Finished,
    FinishReason,
    GenerateSpec,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Start,
    Timings,
    TraceContext,
    Usage,
)

ENDPOINT = "http://127.0.0.1:4317"


@pytest.mark.parametrize(
    ("config", "environ", "expected"),
    [
        ({}, {}, Exports()),
        ({"otlp_endpoint": ENDPOINT}, {}, Exports(True, True, False)),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, Exports(True, True, False)),
        ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, Exports(True, False, False)),
        ({"otlp_endpoint": ENDPOINT}, {"OTEL_METRICS_EXPORTER": "none"}, Exports(True, False, False)),
        ({"prometheus_port": 9464}, {}, Exports(False, False, True)),
        ({"otlp_endpoint": ENDPOINT, "prometheus_port": 0}, {"OTEL_SDK_DISABLED": "true"}, Exports()),
    ],
)
def test_exports_follow_the_config_and_the_standard_variables(
    config: dict[str, object], environ: dict[str, str], expected: Exports
) -> None:
    assert exports(TelemetryConfig.model_validate(config), environ) == expected
    assert expected.enabled is (expected.otlp_traces or expected.otlp_metrics or expected.prometheus)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("rillet.test", logging.INFO, __file__, 1, message, None, None)


def test_json_log_lines_carry_the_current_spans_ids_and_nothing_outside_one() -> None:
    tracer = TracerProvider().get_tracer("test")
    ids, formatter = TraceIds(), JsonFormatter()
    with tracer.start_as_current_span("work") as span:
        inside = record("in a span")
        ids.filter(inside)
    outside = record("outside")
    ids.filter(outside)
    line = json.loads(formatter.format(inside))
    context = span.get_span_context()
    assert (line["trace_id"], line["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert line["message"] == "in a span"
    assert line["level"] == "INFO"
    assert line["logger"] == "rillet.test"
    assert json.loads(formatter.format(outside))["trace_id"] == ""
    assert LogFormat("json") is LogFormat.JSON


class Broken:
    """Instruments whose every histogram raises."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"broken instrument {name}")


def test_an_observer_failure_never_reaches_the_request(caplog: pytest.LogCaptureFixture) -> None:
    observer = TelemetryObserver(None, Broken())  # type: ignore[arg-type]
    request = observer.request(Start("r", GenerateSpec(prompt="p")))
    model = ModelInfo("m", ModelKind.TEXT_GENERATION, "synthetic")
    request.queued(model, GenerationRequest("r", "m", "p", 4), None)
    request.admitted()
    request.finished(Finished(FinishReason.LENGTH, Usage(1, 4), Timings(0.0, None, 0.01, 0.02)))
    observer.rejected(NotFound("nothing"))
    assert "telemetry: RequestObserver.queued failed" in caplog.text


SCOPE = InstrumentationScope("test")


class Reader(WithHistograms, InMemoryMetricReader):
    """An in-memory reader whose collections carry the Histograms too, as the server's readers'."""


def traced(provider: TracerProvider) -> tuple[InMemorySpanExporter, TelemetryObserver, Reader]:
    """An observer whose request spans, like `provider`'s own, go to the returned exporter."""
    spans = InMemorySpanExporter()
    processor = SimpleSpanProcessor(spans)
    provider.add_span_processor(processor)
    histograms = Histograms(SCOPE)
    reader = Reader(histograms)
    instruments = Instruments(MeterProvider(metric_readers=[reader]).get_meter("t"), histograms)
    tracer = RequestTracer(provider, SCOPE, into(processor, provider.resource))
    return spans, TelemetryObserver(tracer, instruments), reader


def test_a_request_with_an_invalid_trace_context_keeps_the_calls_context() -> None:
    provider = TracerProvider()
    spans, observer, _ = traced(provider)
    tracer = provider.get_tracer("test")
    model = ModelInfo("m", ModelKind.TEXT_GENERATION, "synthetic")
    with tracer.start_as_current_span("rpc") as rpc:
        bad = observer.request(Start("r", GenerateSpec(prompt="p"), TraceContext("00-not-a-trace")))
        good = observer.request(
            Start(
                "s", GenerateSpec(prompt="p"), TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            )
        )
    for request in (bad, good):
        request.queued(model, GenerationRequest("x", "m", "p", 4), None)
        request.failed(NotFound("gone"))
    first, second = [s for s in spans.get_finished_spans() if s.name != "rpc"]
    assert first.parent is not None
    assert first.parent.span_id == rpc.get_span_context().span_id
    assert second.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert second.parent is not None
    assert second.parent.span_id == 0xB7AD6B7169203331
    assert [link.context.span_id for link in second.links] == [rpc.get_span_context().span_id]


def test_a_tally_sums_by_attribute_values_and_leaves_empty_ones_out() -> None:
    reader = InMemoryMetricReader()
    tally = Tally(MeterProvider(metric_readers=[reader]).get_meter("t"), "t", ("a", "b"), "1", "test", up_down=True)
    tally.add(("x", ""), 2)
    tally.add(("x", ""), -1)
    tally.add(("x", "y"))
    data = reader.get_metrics_data()
    assert data is not None
    points: Any = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert sorted((sorted(p.attributes.items()), p.value) for p in points) == [
        ([("a", "x")], 1),
        ([("a", "x"), ("b", "y")], 1),
    ]


def test_a_step_reporter_calls_its_listeners_and_engines_that_have_one_are_batching() -> None:
    heard: list[int] = []
    reporter = StepReporter()
    reporter.step(3)  # nobody listens yet
    reporter.listen(heard.append)
    reporter.step(5)

    class Stepping:
        step_reporter = reporter

    assert heard == [5]
    assert isinstance(Stepping(), Batching)
    assert not isinstance(object(), Batching)


def test_requests_the_sampler_drops_get_no_span_and_are_still_measured() -> None:
    spans, observer, reader = traced(TracerProvider(sampler=ALWAYS_OFF))
    request = observer.request(Start("r", GenerateSpec(prompt="p")))
    model = ModelInfo("m", ModelKind.TEXT_GENERATION, "synthetic")
    request.queued(model, GenerationRequest("r", "m", "p", 4), None)
    request.admitted()
    request.first_output()
    request.finished(Finished(FinishReason.LENGTH, Usage(1, 4), Timings(0.0, None, 0.01, 0.02)))
    assert spans.get_finished_spans() == ()
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"gen_ai.server.request.duration", "gen_ai.server.time_to_first_token", "rillet.server.requests"} <= names


def test_a_distribution_counts_buckets_sum_min_and_max_by_attribute_values() -> None:
    histograms = Histograms(SCOPE)
    reader = Reader(histograms)
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    distribution = histograms.create("h", ("a", "b"), "s", "test", (1.0, 2.0))
    Tally(meter, "t", ("a",), "1", "test").add(("x",))  # the SDK hands a reader nothing when it has no point
    for amount in (0.5, 1.0, 1.5, 3.0, -1.0, float("nan"), float("inf")):  # the last three are ignored
        distribution.record(("x", ""), amount)
    distribution.record(("x", "y"), 2.0)
    data = reader.get_metrics_data()
    assert data is not None
    sdk, ours = data.resource_metrics[0].scope_metrics
    assert sdk.scope.name == "t"
    assert ours.scope == SCOPE
    (metric,) = ours.metrics
    assert (metric.name, metric.unit, metric.description) == ("h", "s", "test")
    points: Any = metric.data.data_points
    assert sorted(
        (sorted(p.attributes.items()), list(p.bucket_counts), p.count, p.sum, p.min, p.max) for p in points
    ) == [
        ([("a", "x")], [2, 1, 1], 4, 6.0, 0.5, 3.0),  # buckets (-inf, 1], (1, 2], (2, inf)
        ([("a", "x"), ("b", "y")], [0, 1, 0], 1, 2.0, 2.0, 2.0),
    ]


def test_an_sdk_span_crosses_as_plain_data_and_comes_back_whole() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test", "1.0", schema_url="https://example.com/schema")
    remote = TracerProvider().get_tracer("remote").start_span("remote").get_span_context()
    with tracer.start_as_current_span("rpc", kind=SpanKind.SERVER, attributes={"a": 1, "b": ["x", "y"]}) as rpc:
        rpc.add_event("e", {"k": "v"})
        rpc.set_status(StatusCode.ERROR, "broken")
        child = tracer.start_span("child", links=[Link(remote, {"l": True})])
        child.end()
    for original in spans.get_finished_spans():
        copy = readable(span_data(original), provider.resource)
        assert copy.to_json() == original.to_json()
