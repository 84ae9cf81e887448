"""Every metric instrument the server records, created once from one Meter (names and buckets: semconv.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from rillet.server.telemetry import semconv as sc


class Instruments:
    """The server's instruments. Recording is thread-safe (the batch-size histogram is fed from engine threads)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        # GenAI server metrics (v1.41.0).
        self.request_duration = meter.create_histogram(
            sc.GEN_AI_SERVER_REQUEST_DURATION,
            unit="s",
            description="Generative AI server request duration such as time-to-last byte or last output token",
            explicit_bucket_boundaries_advisory=sc.REQUEST_DURATION_BUCKETS,
        )
        self.time_to_first_token = meter.create_histogram(
            sc.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to generate first token for successful responses (queue and prefill included)",
            explicit_bucket_boundaries_advisory=sc.TIME_TO_FIRST_TOKEN_BUCKETS,
        )
        self.time_per_output_token = meter.create_histogram(
            sc.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
            unit="s",
            description="Time per output token generated after the first token for successful responses",
            explicit_bucket_boundaries_advisory=sc.TIME_PER_OUTPUT_TOKEN_BUCKETS,
        )
        # RPC server metric (v1.44.0).
        self.rpc_duration = meter.create_histogram(
            sc.RPC_SERVER_CALL_DURATION,
            unit="s",
            description="Measures the duration of an incoming Remote Procedure Call (RPC)",
            explicit_bucket_boundaries_advisory=sc.RPC_CALL_DURATION_BUCKETS,
        )
        # Rillet's own.
        self.time_to_first_audio = meter.create_histogram(
            sc.RILLET_TIME_TO_FIRST_AUDIO_METRIC,
            unit="s",
            description="Time to the first audio chunk of successful speech requests (queue included)",
            explicit_bucket_boundaries_advisory=sc.TIME_TO_FIRST_TOKEN_BUCKETS,
        )
        self.queue_duration = meter.create_histogram(
            sc.RILLET_QUEUE_DURATION_METRIC,
            unit="s",
            description="Time a request waited for an engine slot (admission queue and engine queue)",
            explicit_bucket_boundaries_advisory=sc.TIME_TO_FIRST_TOKEN_BUCKETS,
        )
        self.token_usage = meter.create_counter(
            sc.RILLET_TOKEN_USAGE,
            unit="{token}",
            description="Tokens read (gen_ai.token.type=input) and generated (output) by ended requests",
        )
        self.audio_output = meter.create_counter(
            sc.RILLET_AUDIO_OUTPUT, unit="s", description="Seconds of audio synthesized by ended requests"
        )
        self.requests = meter.create_counter(
            sc.RILLET_REQUESTS,
            unit="{request}",
            description="Requests ended, by rillet.request.outcome (finished, cancelled, failed)",
        )
        self.request_errors = meter.create_counter(
            sc.RILLET_REQUEST_ERRORS,
            unit="{request}",
            description="Requests that failed, by canonical code (error.type) and reason (rillet.error.reason)",
        )
        self.rejected_messages = meter.create_counter(
            sc.RILLET_REJECTED_MESSAGES,
            unit="{message}",
            description="Session messages answered with `rejected`, by code and reason",
        )
        self.active_sessions = meter.create_up_down_counter(
            sc.RILLET_ACTIVE_SESSIONS,
            unit="{call}",
            description="Session, Generate and Synthesize calls open",
        )
        self.active_requests = meter.create_up_down_counter(
            sc.RILLET_ACTIVE_REQUESTS, unit="{request}", description="Validated requests not yet ended"
        )
        self.queued_requests = meter.create_up_down_counter(
            sc.RILLET_QUEUED_REQUESTS, unit="{request}", description="Requests waiting for an engine slot"
        )
        self.batch_size = meter.create_histogram(
            sc.RILLET_ENGINE_BATCH_SIZE,
            unit="{sequence}",
            description="Sequences advanced by one engine step (batching engines)",
            explicit_bucket_boundaries_advisory=sc.BATCH_SIZE_BUCKETS,
        )

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
