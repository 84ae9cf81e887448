"""Every metric instrument the server records, created once from one Meter (names and buckets: semconv.py)."""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
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
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from rillet.server.telemetry import semconv as sc

REQUEST_KEY = (sc.GEN_AI_OPERATION_NAME, sc.GEN_AI_PROVIDER_NAME, sc.GEN_AI_REQUEST_MODEL)
"""The attributes that identify a request's kind in every per-request metric, in this order."""
RPC_KEY = (sc.RPC_SYSTEM_NAME, sc.RPC_METHOD, sc.RPC_RESPONSE_STATUS_CODE, sc.ERROR_TYPE)
"""The attributes of rpc.server.call.duration, in this order."""


def attributes_of(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    """The attributes `values` give `names` ("" leaves an attribute out)."""
    return {name: value for name, value in zip(names, values, strict=True) if value != ""}


class Tally:
    """Sums by attribute values, kept in a dict and reported by an observable counter (or up-down counter).

    `add(values, amount)` takes the values of `names` in order ("" leaves an attribute out). Invariant: written on
    one thread (the event loop); read at collection on the exporter's thread, which sees each sum whole.
    """

    def __init__(
        self,
        meter: Meter,
        name: str,
        names: tuple[str, ...],
        unit: str,
        description: str,
        *,
        up_down: bool = False,
    ) -> None:
        self._names = names
        self._sums: dict[tuple[Any, ...], float] = {}
        self._attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        create = meter.create_observable_up_down_counter if up_down else meter.create_observable_counter
        create(name, [self._observe], unit=unit, description=description)

    def add(self, values: tuple[Any, ...], amount: float = 1) -> None:
        sums = self._sums
        if values not in sums:
            self._attributes[values] = attributes_of(self._names, values)
            sums[values] = 0
        sums[values] += amount

    def value(self, values: tuple[Any, ...]) -> float:
        """The sum for `values` (0 when never added to)."""
        return self._sums.get(values, 0)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        attributes = self._attributes
        return [Observation(value, attributes[key]) for key, value in list(self._sums.items())]


class _Point:
    """One attribute set's histogram: bucket counts, count, sum, min and max."""

    __slots__ = ("attributes", "count", "counts", "max", "min", "sum")

    def __init__(self, attributes: dict[str, Any], buckets: int) -> None:
        self.attributes = attributes
        self.counts = [0] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf


class Distribution:
    """A histogram with explicit buckets, kept in dicts by attribute values and exported by `Histograms.merge`.

    `record(values, amount)` takes the values of `names` in order ("" leaves an attribute out); a negative or
    non-finite amount is ignored, as the SDK's histograms ignore it. Cumulative, whatever temporality a reader
    prefers. Invariant: recording and collecting hold one lock (the batch-size histogram is fed from engine
    threads), so a collection sees whole measurements.
    """

    def __init__(self, name: str, names: tuple[str, ...], unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self._names = names
        self._unit = unit
        self._description = description
        self._bounds = tuple(float(bound) for bound in bounds)
        self._points: dict[tuple[Any, ...], _Point] = {}
        self._lock = threading.Lock()
        self._start = time.time_ns()

    def record(self, values: tuple[Any, ...], amount: float) -> None:
        if not 0 <= amount < math.inf:
            return
        with self._lock:
            point = self._points.get(values)
            if point is None:
                point = self._points[values] = _Point(attributes_of(self._names, values), len(self._bounds) + 1)
            point.counts[bisect_left(self._bounds, amount)] += 1  # bucket i holds (bounds[i-1], bounds[i]]
            point.count += 1
            point.sum += amount
            if amount < point.min:
                point.min = amount
            if amount > point.max:
                point.max = amount

    def metric(self, now: int) -> Metric | None:
        """The histogram's points as the SDK's Metric (None before the first measurement)."""
        with self._lock:
            points = [
                HistogramDataPoint(
                    p.attributes, self._start, now, p.count, p.sum, list(p.counts), self._bounds, p.min, p.max
                )
                for p in self._points.values()
            ]
        if not points:
            return None
        data = Histogram(points, AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self._description, self._unit, data)


class Histograms:
    """The server's histograms (Distribution), joined to every collection of the SDK's readers by `merge`.

    Why not the SDK's histograms: each of their measurements cleans and hashes its attributes once per reader
    (about 6 µs with one reader, 9 with two); a Distribution's costs a dict look-up and a bisection.
    """

    def __init__(self, scope: InstrumentationScope) -> None:
        self._scope = scope
        self._all: list[Distribution] = []

    def create(
        self, name: str, names: tuple[str, ...], unit: str, description: str, bounds: Sequence[float]
    ) -> Distribution:
        distribution = Distribution(name, names, unit, description, bounds)
        self._all.append(distribution)
        return distribution

    def merge(self, data: MetricsData) -> MetricsData:
        """`data` (a reader's collection) with the histograms added to this scope's metrics.

        The SDK hands a reader nothing when none of its own instruments has a point; the server's always has one:
        the engines' slot gauges (Instruments.observe_slots) report every engine from the start.
        """
        now = time.time_ns()
        metrics = [metric for distribution in self._all if (metric := distribution.metric(now)) is not None]
        if not metrics:
            return data
        resources = list(data.resource_metrics) or [ResourceMetrics(Resource.get_empty(), [], "")]
        first = resources[0]
        scopes = list(first.scope_metrics)
        index = next((i for i, s in enumerate(scopes) if s.scope == self._scope), None)
        if index is None:
            scopes.append(ScopeMetrics(self._scope, metrics, self._scope.schema_url or ""))
        else:
            scopes[index] = ScopeMetrics(self._scope, [*scopes[index].metrics, *metrics], scopes[index].schema_url)
        resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resources)


class WithHistograms(MetricReader):
    """Mixed in before an SDK reader class: its every collection carries `histograms` too.

    `class Reader(WithHistograms, PeriodicExportingMetricReader)`, then `Reader(histograms, exporter)`.
    """

    def __init__(self, histograms: Histograms, *args: Any, **kwargs: Any) -> None:
        self.histograms = histograms
        super().__init__(*args, **kwargs)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        # (the reader class mixed in after this one implements it)
        super()._receive_metrics(self.histograms.merge(metrics_data), timeout_millis, **kwargs)  # type: ignore[safe-super]


class Instruments:
    """The server's instruments. Recording is thread-safe (the batch-size histogram is fed from engine threads).

    Histograms are Distributions of `histograms`, which the readers merge into their collections (runtime.py);
    counts are Tallies. Both take their attributes as a tuple of values, in the order their names are listed here.
    """

    def __init__(self, meter: Meter, histograms: Histograms) -> None:
        self.meter = meter
        self.histograms = histograms
        histogram = histograms.create
        # GenAI server metrics (v1.41.0).
        self.request_duration = histogram(
            sc.GEN_AI_SERVER_REQUEST_DURATION, (*REQUEST_KEY, sc.ERROR_TYPE), "s",
            "Generative AI server request duration such as time-to-last byte or last output token",
            sc.REQUEST_DURATION_BUCKETS,
        )  # fmt: skip
        self.time_to_first_token = histogram(
            sc.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, REQUEST_KEY, "s",
            "Time to generate first token for successful responses (queue and prefill included)",
            sc.TIME_TO_FIRST_TOKEN_BUCKETS,
        )  # fmt: skip
        self.time_per_output_token = histogram(
            sc.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, REQUEST_KEY, "s",
            "Time per output token generated after the first token for successful responses",
            sc.TIME_PER_OUTPUT_TOKEN_BUCKETS,
        )  # fmt: skip
        # RPC server metric (v1.44.0).
        self.rpc_duration = histogram(
            sc.RPC_SERVER_CALL_DURATION, RPC_KEY, "s",
            "Measures the duration of an incoming Remote Procedure Call (RPC)", sc.RPC_CALL_DURATION_BUCKETS,
        )  # fmt: skip
        # Rillet's own.
        self.time_to_first_audio = histogram(
            sc.RILLET_TIME_TO_FIRST_AUDIO_METRIC, REQUEST_KEY, "s",
            "Time to the first audio chunk of successful speech requests (queue included)",
            sc.TIME_TO_FIRST_TOKEN_BUCKETS,
        )  # fmt: skip
        self.queue_duration = histogram(
            sc.RILLET_QUEUE_DURATION_METRIC, REQUEST_KEY, "s",
            "Time a request waited for an engine slot (admission queue and engine queue)",
            sc.TIME_TO_FIRST_TOKEN_BUCKETS,
        )  # fmt: skip
        # Counts kept in plain dicts and observed at collection: a request's counting costs dict updates, not SDK
        # calls (each SDK measurement cleans and hashes its attributes: tens of microseconds).
        self.token_usage = Tally(
            meter, sc.RILLET_TOKEN_USAGE, (*REQUEST_KEY, sc.GEN_AI_TOKEN_TYPE), "{token}",
            "Tokens read (gen_ai.token.type=input) and generated (output) by ended requests",
        )  # fmt: skip
        self.audio_output = Tally(
            meter, sc.RILLET_AUDIO_OUTPUT, REQUEST_KEY, "s", "Seconds of audio synthesized by ended requests"
        )
        self.requests = Tally(
            meter, sc.RILLET_REQUESTS, (*REQUEST_KEY, sc.RILLET_REQUEST_OUTCOME), "{request}",
            "Requests ended, by rillet.request.outcome (finished, cancelled, failed)",
        )  # fmt: skip
        self.request_errors = Tally(
            meter, sc.RILLET_REQUEST_ERRORS, (*REQUEST_KEY, sc.ERROR_TYPE, sc.RILLET_ERROR_REASON), "{request}",
            "Requests that failed, by canonical code (error.type) and reason (rillet.error.reason)",
        )  # fmt: skip
        self.rejected_messages = Tally(
            meter, sc.RILLET_REJECTED_MESSAGES, (sc.ERROR_TYPE, sc.RILLET_ERROR_REASON), "{message}",
            "Session messages answered with `rejected`, by code and reason",
        )  # fmt: skip
        self.active_sessions = Tally(
            meter, sc.RILLET_ACTIVE_SESSIONS, (sc.RPC_METHOD,), "{call}",
            "Session, Generate and Synthesize calls open", up_down=True,
        )  # fmt: skip
        self.active_requests = Tally(
            meter, sc.RILLET_ACTIVE_REQUESTS, REQUEST_KEY, "{request}", "Validated requests not yet ended", up_down=True
        )
        self.queued_requests = Tally(
            meter, sc.RILLET_QUEUED_REQUESTS, REQUEST_KEY, "{request}", "Requests waiting for an engine slot",
            up_down=True,
        )  # fmt: skip
        self.batch_size = histogram(
            sc.RILLET_ENGINE_BATCH_SIZE, (sc.RILLET_ENGINE,), "{sequence}",
            "Sequences advanced by one engine step (batching engines)", sc.BATCH_SIZE_BUCKETS,
        )  # fmt: skip

    def observe_slots(self, engines: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """Gauges of slots in use and slots in all, per engine, read from `engines()` (name, active, slots)."""

        def used(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(active, {sc.RILLET_ENGINE: name}) for name, active, _ in engines()]

        def limit(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(slots, {sc.RILLET_ENGINE: name}) for name, _, slots in engines()]

        self.meter.create_observable_gauge(
            sc.RILLET_ENGINE_SLOTS_USED, [used], unit="{slot}", description="Engine slots holding a request"
        )
        self.meter.create_observable_gauge(
            sc.RILLET_ENGINE_SLOTS_LIMIT, [limit], unit="{slot}", description="Engine slots in all"
        )
