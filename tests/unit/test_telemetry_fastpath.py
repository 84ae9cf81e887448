"""The telemetry fast path held to the SDK: Rillet's histograms export what the SDK's own Histogram exports."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricsData
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from rillet.server.config import TelemetryConfig
from rillet.server.telemetry.fastpath.histograms import Histograms, WithHistograms, attributes_of
from rillet.server.telemetry.instruments import Tally
from rillet.server.telemetry.plan import Exports
from rillet.server.telemetry.runtime import Telemetry

NAMES = ("a", "b")
BOUNDS = (0.25, 0.5, 1.0, 2.5)
CUMULATIVE, DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
# Amounts are binary fractions, so that sums come out the same whatever order they are added in. Each batch is
# recorded, then collected by the readers named beside it.
BATCHES: list[tuple[list[tuple[tuple[str, str], float]], set[AggregationTemporality]]] = [
    ([(("x", ""), 0.125), (("x", ""), 0.25), (("x", "y"), 0.5), (("x", ""), 3.0)], {CUMULATIVE, DELTA}),
    ([(("x", ""), -1.0), (("z", ""), float("nan")), (("z", ""), float("inf"))], {DELTA}),  # all three ignored
    ([(("x", ""), 1.0), (("z", "w"), 2.5), (("z", "w"), 0.0)], {DELTA}),
    ([], {CUMULATIVE, DELTA}),  # nothing new: no point for a delta reader, the same ones for a cumulative reader
    ([(("x", "y"), 0.75), (("x", ""), 10.0), (("z", "w"), 0.25)], {CUMULATIVE}),
    ([(("x", "y"), 0.5)], {CUMULATIVE, DELTA}),
]


class Reader(WithHistograms, InMemoryMetricReader):
    """An in-memory reader whose collections carry the Histograms too, as the server's readers'."""


def exported(data: MetricsData, name: str) -> tuple[Any, list[Any], dict[tuple[Any, ...], tuple[int, int]]]:
    """Histogram `name` in `data`: (temporality, unit, description), its points, their (start, time) by attributes."""
    metrics = [m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics if m.name == name]
    if not metrics:
        return None, [], {}
    (metric,) = metrics
    histogram: Any = metric.data
    points = histogram.data_points
    rows = sorted(
        (sorted(p.attributes.items()), list(p.bucket_counts), p.count, p.sum, p.min, p.max, list(p.explicit_bounds))
        for p in points
    )
    times = {tuple(sorted(p.attributes.items())): (p.start_time_unix_nano, p.time_unix_nano) for p in points}
    return (histogram.aggregation_temporality, metric.unit, metric.description), rows, times


def collected(data: MetricsData, name: str) -> int:
    """The time of the collection `data` as metric `name`'s (first) point tells it."""
    (point, *_) = next(
        m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics if m.name == name
    ).data.data_points
    return point.time_unix_nano


def test_rillets_histograms_export_what_the_sdks_histogram_exports_to_cumulative_and_delta_readers() -> None:
    histograms = Histograms(InstrumentationScope("rillet"))
    readers = {t: Reader(histograms, preferred_temporality={SdkHistogram: t}) for t in (CUMULATIVE, DELTA)}
    resource = Resource({"service.name": "equivalence"})
    meter = MeterProvider(metric_readers=list(readers.values()), resource=resource).get_meter("sdk")
    sdk = meter.create_histogram("sdk", unit="s", description="d", explicit_bucket_boundaries_advisory=BOUNDS)
    ours = histograms.create("ours", NAMES, "s", "d", BOUNDS)
    Tally(meter, "t", ("k",), "1", "t").add(("v",))  # an SDK point at every collection, as the server's slot gauges
    clock = histograms.create("clock", (), "s", "", BOUNDS)  # one point of ours at every collection: its time
    previous: dict[AggregationTemporality, dict[str, int]] = {CUMULATIVE: {}, DELTA: {}}  # collection times
    starts: dict[tuple[str, tuple[Any, ...]], int] = {}
    for batch, collecting in BATCHES:
        for values, amount in batch:
            sdk.record(amount, attributes_of(NAMES, values))
            ours.record(values, amount)
        for temporality in sorted(collecting):
            clock.record((), 0.0)
            data = readers[temporality].get_metrics_data()
            assert data is not None
            (resource_metrics,) = data.resource_metrics
            assert resource_metrics.resource is resource  # the provider's, for the SDK's metrics and ours alike
            (sdk_kind, sdk_points, sdk_times), (our_kind, our_points, our_times) = (
                exported(data, "sdk"), exported(data, "ours")
            )  # fmt: skip
            assert our_points == sdk_points
            assert our_kind == sdk_kind
            if sdk_points:
                assert sdk_kind == (temporality, "s", "d")
            # Start times follow the SDK's rules: delta, the reader's previous collection (after its first);
            # cumulative, the attribute set's first measurement, the same in every collection.
            now = {"sdk": collected(data, "t"), "ours": collected(data, "clock")}
            for side, times in (("sdk", sdk_times), ("ours", our_times)):
                for key, (start, time) in times.items():
                    assert start <= time == now[side]
                    if temporality is DELTA and side in previous[DELTA]:
                        assert start == previous[DELTA][side]
                    if temporality is CUMULATIVE:
                        assert starts.setdefault((side, key), start) == start
            previous[temporality] = now
    assert exported(readers[CUMULATIVE].get_metrics_data() or MetricsData([]), "ours")[1] == [
        ([("a", "x")], [2, 0, 1, 0, 2], 5, 14.375, 0.125, 10.0, list(BOUNDS)),
        ([("a", "x"), ("b", "y")], [0, 2, 1, 0, 0], 3, 1.75, 0.5, 0.75, list(BOUNDS)),
        ([("a", "z"), ("b", "w")], [2, 0, 0, 1, 0], 3, 2.75, 0.0, 2.5, list(BOUNDS)),
    ]  # and the SDK's are those: buckets (-inf, 0.25], (0.25, 0.5], (0.5, 1], (1, 2.5], (2.5, inf)


def test_a_reader_asking_for_another_histogram_aggregation_is_refused_when_joined() -> None:
    histograms = Histograms(InstrumentationScope("rillet"))
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"):
        Reader(histograms, preferred_aggregation={SdkHistogram: ExponentialBucketHistogramAggregation()})


def test_the_server_refuses_exponential_histograms_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "base2_exponential_bucket_histogram")
    config = TelemetryConfig(otlp_endpoint="http://127.0.0.1:4317")
    with pytest.raises(ValueError, match="explicit buckets only"):
        Telemetry(config, Exports(otlp_metrics=True))
