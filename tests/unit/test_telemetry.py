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

from rillet.server.config import LogFormat, TelemetryConfig
from rillet.server.errors import NotFound
from rillet.server.observer import Batching, StepReporter
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
        ({"otlp_endpoint": ENDPOINT}, {"OTEL_METRICS_EXEMPLAR_FILTER": "always_on"}, Exports(True, True, False, True)),
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


def test_a_request_with_an_invalid_trace_context_keeps_the_calls_context() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    observer = TelemetryObserver(
        tracer, Instruments(MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("t"))
    )
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
