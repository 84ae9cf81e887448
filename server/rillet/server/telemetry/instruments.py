"""Every metric instrument the server records, created once from one Meter (names and buckets: semconv.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from rillet.server.load import EngineGauges
from rillet.server.telemetry import semconv as sc
from rillet.server.telemetry.fastpath.histograms import Histograms, attributes_of

REQUEST_KEY = (sc.GEN_AI_OPERATION_NAME, sc.GEN_AI_PROVIDER_NAME, sc.GEN_AI_REQUEST_MODEL)
"""The attributes that identify a request's kind in every per-request metric, in this order."""
RPC_KEY = (sc.RPC_SYSTEM_NAME, sc.RPC_METHOD, sc.RPC_RESPONSE_STATUS_CODE, sc.ERROR_TYPE)
"""The attributes of rpc.server.call.duration, in this order."""


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


class Instruments:
    """The server's instruments. Recording is thread-safe (the batch-size histogram is fed from engine threads).

    Histograms are Distributions of `histograms` (fastpath/histograms.py), which every reader's collection joins;
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

    def observe_load(self, gauges: Callable[[], Iterable[EngineGauges]]) -> None:
        """Gauges of requests running and waiting and of KV cache use, per engine, read from `gauges()` (load.py).

        The numbers GetLoad and ORCA report; the KV gauge has a series only for engines that report their cache.
        """

        def running(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(g.running, {sc.RILLET_ENGINE: g.engine}) for g in gauges()]

        def waiting(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(g.waiting, {sc.RILLET_ENGINE: g.engine}) for g in gauges()]

        def kv_cache(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(g.kv_cache_utilization, {sc.RILLET_ENGINE: g.engine})
                for g in gauges()
                if g.kv_cache_utilization is not None
            ]

        self.meter.create_observable_gauge(
            sc.RILLET_ENGINE_REQUESTS_RUNNING, [running], unit="{request}",
            description="Requests holding an engine slot",
        )  # fmt: skip
        self.meter.create_observable_gauge(
            sc.RILLET_ENGINE_REQUESTS_WAITING, [waiting], unit="{request}",
            description="Requests waiting for an engine slot (both priority classes)",
        )  # fmt: skip
        self.meter.create_observable_gauge(
            sc.RILLET_ENGINE_KV_CACHE_UTILIZATION, [kv_cache], unit="1",
            description="Share of the engine's KV cache in use (engines that report it)",
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
