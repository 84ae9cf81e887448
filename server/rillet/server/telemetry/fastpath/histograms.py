"""Rillet's histograms: kept in dicts by attribute values, joined to each SDK reader's collection in its temporality."""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

Key = tuple[Any, ...]
"""An attribute set as the values of a histogram's attribute names, in order."""
T = TypeVar("T")


def attributes_of(names: tuple[str, ...], values: Key) -> dict[str, Any]:
    """The attributes `values` give `names` ("" leaves an attribute out)."""
    return {name: value for name, value in zip(names, values, strict=True) if value != ""}


class _Point:
    """One attribute set's histogram over an interval: bucket counts, count, sum, min, max, and when it began."""

    __slots__ = ("attributes", "count", "counts", "max", "min", "start", "sum")

    def __init__(self, attributes: dict[str, Any], buckets: int, start: int) -> None:
        self.attributes = attributes
        self.counts = [0] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.start = start  # ns since the epoch: the first measurement

    def copy(self) -> _Point:
        point = _Point(self.attributes, 0, self.start)
        point.counts, point.count, point.sum, point.min, point.max = (
            list(self.counts), self.count, self.sum, self.min, self.max,
        )  # fmt: skip
        return point

    def add(self, later: _Point) -> None:
        """Fold in a later interval of the same attribute set (in the order the SDK's cumulative histograms do)."""
        self.counts = [new + old for new, old in zip(later.counts, self.counts, strict=True)]
        self.count += later.count
        self.sum = later.sum + self.sum
        self.min = min(later.min, self.min)
        self.max = max(later.max, self.max)


class Distribution:
    """A histogram with explicit buckets, recorded by attribute values; exported through its Histograms.

    `record(values, amount)` takes the values of `names` in order ("" leaves an attribute out); a negative or
    non-finite amount is ignored, as the SDK's histograms ignore it. Invariant: recording and `take` hold one lock
    (the batch-size histogram is fed from engine threads), so an interval holds whole measurements.
    """

    def __init__(self, name: str, names: tuple[str, ...], unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self._names = names
        self._unit = unit
        self._description = description
        self._bounds = tuple(float(bound) for bound in bounds)
        self._points: dict[Key, _Point] = {}  # since the last `take`
        self._attributes: dict[Key, dict[str, Any]] = {}  # made once per attribute set, shared by its points
        self._lock = threading.Lock()

    def record(self, values: Key, amount: float) -> None:
        if not 0 <= amount < math.inf:
            return
        with self._lock:
            point = self._points.get(values)
            if point is None:  # an attribute set's first measurement since the last collection
                attributes = self._attributes.get(values)
                if attributes is None:
                    attributes = self._attributes[values] = attributes_of(self._names, values)
                point = self._points[values] = _Point(attributes, len(self._bounds) + 1, time.time_ns())
            point.counts[bisect_left(self._bounds, amount)] += 1  # bucket i holds (bounds[i-1], bounds[i]]
            point.count += 1
            point.sum += amount
            if amount < point.min:
                point.min = amount
            if amount > point.max:
                point.max = amount

    def take(self) -> dict[Key, _Point]:
        """The points recorded since the last take, leaving none."""
        with self._lock:
            points, self._points = self._points, {}
        return points

    def metric(
        self, points: Mapping[Key, _Point], temporality: AggregationTemporality, now: int, since: int | None
    ) -> Metric | None:
        """`points` as the SDK's Metric (None when there are none), each begun at `since` if given, else its start."""
        if not points:
            return None
        data = [
            HistogramDataPoint(
                p.attributes, p.start if since is None else since, now, p.count, p.sum, list(p.counts), self._bounds,
                p.min, p.max,
            )
            for p in points.values()
        ]  # fmt: skip
        return Metric(self.name, self._description, self._unit, Histogram(data, temporality))


class _Stream:
    """One reader's view of the histograms: every interval so far (CUMULATIVE), or since its last collection."""

    __slots__ = ("collected", "points", "temporality")

    def __init__(self, temporality: AggregationTemporality) -> None:
        self.temporality = temporality
        self.points: dict[Distribution, dict[Key, _Point]] = {}
        self.collected: int | None = None  # when this reader last collected

    def fold(self, distribution: Distribution, interval: Mapping[Key, _Point]) -> None:
        points = self.points.setdefault(distribution, {})
        for key, point in interval.items():
            mine = points.get(key)
            if mine is None:
                points[key] = point.copy()
            else:
                mine.add(point)


def _for_histograms(table: Mapping[Any, T], reader: MetricReader) -> T:
    """The SDK reader's preference for histograms in one of its per-instrument-class tables."""
    found = [value for kind, value in table.items() if issubclass(kind, SdkHistogram)]
    if len(found) != 1:
        raise RuntimeError(f"telemetry: cannot read {type(reader).__name__}'s preferences for histograms")
    return found[0]


class Histograms:
    """The server's histograms (Distributions), and the readers (`join`) each collection of which they join.

    Each reader gets them in the temporality it prefers for histograms: a collection folds what was recorded since
    the previous one (by any reader) into every reader's view, then hands the collecting reader its view, emptied
    after it when the reader is DELTA. Invariant: one collection at a time (readers collect on their own threads).
    """

    def __init__(self, scope: InstrumentationScope) -> None:
        self._scope = scope
        self._all: list[Distribution] = []
        self._streams: list[_Stream] = []
        self._collecting = threading.Lock()

    def create(
        self, name: str, names: tuple[str, ...], unit: str, description: str, bounds: Sequence[float]
    ) -> Distribution:
        distribution = Distribution(name, names, unit, description, bounds)
        self._all.append(distribution)
        return distribution

    def join(self, reader: MetricReader) -> _Stream:
        """A stream for `reader`, in the temporality it prefers for histograms.

        ValueError when it prefers an aggregation other than explicit buckets. The preferences are read from the
        tables the SDK's own MeterProvider reads them from (private, pinned).
        """
        temporality = _for_histograms(reader._instrument_class_temporality, reader)
        aggregation = _for_histograms(reader._instrument_class_aggregation, reader)
        if type(aggregation) not in (DefaultAggregation, ExplicitBucketHistogramAggregation):
            raise ValueError(
                f"telemetry: {type(reader).__name__} asks for {type(aggregation).__name__} for histograms, and "
                "Rillet's histograms have explicit buckets only: unset "
                "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION (or set it to explicit_bucket_histogram)"
            )
        stream = _Stream(temporality)
        with self._collecting:
            self._streams.append(stream)
        return stream

    def collect(self, stream: _Stream) -> list[Metric]:
        """`stream`'s reader's histograms now."""
        delta = stream.temporality is AggregationTemporality.DELTA
        with self._collecting:
            now = time.time_ns()
            for distribution in self._all:
                interval = distribution.take()
                if interval:
                    for each in self._streams:
                        each.fold(distribution, interval)
            since = stream.collected if delta else None
            metrics = [
                metric
                for distribution in self._all
                if (metric := distribution.metric(stream.points.get(distribution, {}), stream.temporality, now, since))
            ]
            if delta:
                stream.points.clear()
            stream.collected = now
        return metrics

    def merge(self, stream: _Stream, data: MetricsData) -> MetricsData:
        """`data` (a collection of `stream`'s reader) with the histograms added to this scope's metrics.

        The SDK's collection holds one ResourceMetrics, of the MeterProvider's Resource: the histograms join it.
        """
        metrics = self.collect(stream)
        if not metrics:
            return data
        first, *others = data.resource_metrics
        scopes = list(first.scope_metrics)
        index = next((i for i, s in enumerate(scopes) if s.scope == self._scope), None)
        if index is None:
            scopes.append(ScopeMetrics(self._scope, metrics, self._scope.schema_url or ""))
        else:
            scopes[index] = ScopeMetrics(self._scope, [*scopes[index].metrics, *metrics], scopes[index].schema_url)
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *others])


class WithHistograms(MetricReader):
    """Mixed in before an SDK reader class: its every collection carries `histograms` too, in its temporality.

    `class Reader(WithHistograms, PeriodicExportingMetricReader)`, then `Reader(histograms, exporter)`.
    """

    def __init__(self, histograms: Histograms, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.histograms = histograms
        try:
            self._stream = histograms.join(self)  # after the SDK's __init__: it sets the preferences join reads
        except Exception:
            self.shutdown()  # a periodic reader's thread is running already
            raise

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        # (the reader class mixed in after this one implements it)
        merged = self.histograms.merge(self._stream, metrics_data)
        super()._receive_metrics(merged, timeout_millis, **kwargs)  # type: ignore[safe-super]
