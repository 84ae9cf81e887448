"""Which telemetry exports are on, decided once at the entrypoint from the config and the OTEL_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rillet.server.config import TelemetryConfig


@dataclass(frozen=True, slots=True)
class Exports:
    """Which exports are on. Telemetry is off, and costs nothing, when none is."""

    otlp_traces: bool = False
    otlp_metrics: bool = False
    prometheus: bool = False

    @property
    def metrics(self) -> bool:
        return self.otlp_metrics or self.prometheus

    @property
    def enabled(self) -> bool:
        return self.otlp_traces or self.metrics


def exports(config: TelemetryConfig, environ: Mapping[str, str]) -> Exports:
    """The exports `config` and the standard OTEL_* variables of `environ` turn on (read once, at the entrypoint).

    OTLP is on for a signal when an endpoint is configured (`otlp_endpoint`, OTEL_EXPORTER_OTLP_ENDPOINT or the
    signal's own OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT) unless OTEL_<SIGNAL>_EXPORTER is `none`; the Prometheus
    endpoint when `prometheus_port` is set. OTEL_SDK_DISABLED=true turns everything off.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Exports()

    def otlp(signal: str) -> bool:
        if environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none":
            return False
        return bool(
            config.otlp_endpoint
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        )

    return Exports(otlp("TRACES"), otlp("METRICS"), config.prometheus_port is not None)
