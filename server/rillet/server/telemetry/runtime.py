"""Telemetry set up once at the entrypoint: which exports are on, the SDK providers, and the Prometheus endpoint."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server

from rillet.server import version as rillet_version
from rillet.server.config import TelemetryConfig
from rillet.server.load import EngineGauges
from rillet.server.observer import Batching
from rillet.server.telemetry import semconv as sc
from rillet.server.telemetry.fastpath.histograms import Histograms, WithHistograms
from rillet.server.telemetry.fastpath.offload import OffloadedExport
from rillet.server.telemetry.fastpath.spans import RequestTracer
from rillet.server.telemetry.instruments import Instruments
from rillet.server.telemetry.plan import Exports
from rillet.server.telemetry.requests import TelemetryObserver
from rillet.server.telemetry.rpc import RpcTelemetry

log = logging.getLogger(__name__)

SCOPE = "rillet.server"


class _Engine(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def slots(self) -> int: ...

    @property
    def active(self) -> int: ...


class _OtlpMetrics(WithHistograms, PeriodicExportingMetricReader):
    pass


class _Prometheus(WithHistograms, PrometheusMetricReader):
    pass


def _resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by the SDK), with "rillet" as the default name."""
    resource = Resource.create({SERVICE_VERSION: rillet_version()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "rillet"}))
    return resource


class Telemetry:
    """The SDK providers and exporters, and what the server plugs in: `observer` and `rpc` (a handler guard).

    `watch` subscribes to the engines (slot gauges, batch sizes); `force_flush` exports what is pending and returns
    when it is exported; `shutdown` does too and stops (call it after the server stopped: the last spans and metrics
    are exported then).
    """

    def __init__(self, config: TelemetryConfig, exports: Exports, *, host: str = "", port: int = 0) -> None:
        resource = _resource()
        version = rillet_version()
        endpoint = config.otlp_endpoint  # None: the exporters read OTEL_EXPORTER_OTLP_* themselves
        scope = InstrumentationScope(SCOPE, version, sc.SCHEMA_URL)
        self._tracer_provider: TracerProvider | None = None
        tracer = request_tracer = None
        if exports.otlp_traces:
            provider = self._tracer_provider = TracerProvider(resource=resource)
            spans = OffloadedExport(endpoint, provider.resource)
            provider.add_span_processor(spans)
            tracer = provider.get_tracer(SCOPE, version, schema_url=sc.SCHEMA_URL)
            request_tracer = RequestTracer(provider, scope, spans.ship)
        histograms = Histograms(scope)
        readers: list[MetricReader] = []
        if exports.otlp_metrics:
            readers.append(_OtlpMetrics(histograms, OTLPMetricExporter(endpoint=endpoint)))
        registry: CollectorRegistry | None = None
        if exports.prometheus:
            registry = CollectorRegistry()
            for collector in (ProcessCollector, PlatformCollector, GCCollector):
                collector(registry=registry)
            readers.append(_Prometheus(histograms, scope_info_enabled=False, registry=registry))
        self._meter_provider = MeterProvider(
            resource=resource,
            metric_readers=readers,
            exemplar_filter=AlwaysOffExemplarFilter(),  # its instruments are all observable: none would be taken
        )
        meter = self._meter_provider.get_meter(SCOPE, version, schema_url=sc.SCHEMA_URL)
        self.instruments = Instruments(meter, histograms)
        self.observer = TelemetryObserver(request_tracer, self.instruments, capture_content=config.capture_content)
        self.rpc = RpcTelemetry(tracer, self.instruments, host=host, port=port)
        self.prometheus_port: int | None = None
        self._http = None
        if registry is not None and config.prometheus_port is not None:
            self._http, _ = start_http_server(config.prometheus_port, config.prometheus_host, registry=registry)
            self.prometheus_port = self._http.server_port
            log.info("prometheus metrics on http://%s:%d/metrics", config.prometheus_host, self.prometheus_port)
        log.info(
            "telemetry: traces %s, metrics %s%s",
            "over OTLP" if exports.otlp_traces else "off",
            "over OTLP" if exports.otlp_metrics else "not over OTLP",
            " and on the Prometheus endpoint" if exports.prometheus else "",
        )

    def watch(self, engines: Iterable[_Engine]) -> None:
        """Gauge the engines' slots and hear the batch size of every step of those that batch (observer.Batching)."""
        watched = tuple(engines)
        self.instruments.observe_slots(lambda: [(e.name, e.active, e.slots) for e in watched])
        for engine in watched:
            if isinstance(engine, Batching):
                engine.step_reporter.listen(functools.partial(self.instruments.batch_size.record, (engine.name,)))

    def watch_load(self, gauges: Callable[[], Iterable[EngineGauges]]) -> None:
        """Gauge the engines' running and waiting requests and KV cache use, as the load reports (load.LoadBoard)."""
        self.instruments.observe_load(gauges)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is pending now: spans (through the exporter child) and a collection of every metric reader."""
        traced = self._tracer_provider is None or self._tracer_provider.force_flush(timeout_millis)
        return self._meter_provider.force_flush(timeout_millis) and traced

    def shutdown(self) -> None:
        """Flush and stop the exporters and the Prometheus endpoint."""
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        self._meter_provider.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
