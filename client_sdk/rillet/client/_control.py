"""The control plane's results (server info, load, token counts) and their pure converters from rillet.v1."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from rillet.client import _convert
from rillet.client._types import Model, ModelKind
from rillet.v1 import control_service_pb2, inference_service_pb2

_KINDS = {
    inference_service_pb2.Model.KIND_TEXT_GENERATION: ModelKind.TEXT_GENERATION,
    inference_service_pb2.Model.KIND_SPEECH_SYNTHESIS: ModelKind.SPEECH_SYNTHESIS,
}


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """An engine of the server and what it offers beyond generation."""

    name: str
    kind: ModelKind
    slots: int
    is_test_engine: bool
    tokenizer: bool
    """Tokenize, Detokenize and CountTokens serve its models."""
    reports_kv_cache: bool
    """Its EngineLoad carries `kv_cache_utilization`."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server is: version, engines, models, limits, drain state (ControlService.GetServerInfo)."""

    version: str
    engines: tuple[EngineInfo, ...]
    models: tuple[Model, ...]
    max_tokens: int
    max_prompt_chars: int
    max_requests_per_session: int
    max_queue: int
    min_load_interval_s: float
    max_load_interval_s: float
    max_connection_age_s: float | None
    """How long a connection lives before the server moves its client to a new one; None: no limit."""
    draining: bool
    start_time: float
    """Seconds since the epoch."""


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One engine's load: requests running and waiting, slots, KV cache use, recent throughput."""

    engine: str
    kind: ModelKind
    running: int
    waiting: int
    waiting_batch: int
    slots: int
    kv_cache_utilization: float | None
    """None when the engine does not report its KV cache."""
    utilization: float
    """In [0, 1]: the larger of (running + waiting) / slots and the KV cache use."""
    requests_per_second: float
    tokens_per_second: float
    characters_per_second: float


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """The whole server's load, as GetLoad, WatchLoad and its ORCA reports tell it."""

    time: float
    """Seconds since the epoch."""
    engines: tuple[EngineLoad, ...]
    utilization: float
    """The busiest engine's (ORCA application_utilization)."""
    requests_per_second: float
    cpu_utilization: float
    open_calls: int
    draining: bool


@dataclass(frozen=True, slots=True)
class TokenCount:
    """How many tokens a prompt takes, and the model's context (prompt plus max_tokens must fit)."""

    tokens: int
    context_length: int


def _epoch(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def server_info(message: control_service_pb2.GetServerInfoResponse) -> ServerInfo:
    limits = message.limits
    return ServerInfo(
        version=message.version,
        engines=tuple(
            EngineInfo(
                name=e.name,
                kind=_KINDS.get(e.kind, ModelKind.TEXT_GENERATION),
                slots=e.slots,
                is_test_engine=e.is_test_engine,
                tokenizer=e.tokenizer,
                reports_kv_cache=e.reports_kv_cache,
            )
            for e in message.engines
        ),
        models=tuple(_convert.model(m) for m in message.models),
        max_tokens=limits.max_tokens,
        max_prompt_chars=limits.max_prompt_chars,
        max_requests_per_session=limits.max_requests_per_session,
        max_queue=limits.max_queue,
        min_load_interval_s=_convert.seconds(limits.min_load_interval),
        max_load_interval_s=_convert.seconds(limits.max_load_interval),
        max_connection_age_s=_convert.seconds(limits.max_connection_age)
        if limits.HasField("max_connection_age")
        else None,
        draining=message.draining,
        start_time=_epoch(message.start_time),
    )


def server_load(message: control_service_pb2.ServerLoad) -> ServerLoad:
    return ServerLoad(
        time=_epoch(message.time),
        engines=tuple(
            EngineLoad(
                engine=e.engine,
                kind=_KINDS.get(e.kind, ModelKind.TEXT_GENERATION),
                running=e.running,
                waiting=e.waiting,
                waiting_batch=e.waiting_batch,
                slots=e.slots,
                kv_cache_utilization=e.kv_cache_utilization if e.HasField("kv_cache_utilization") else None,
                utilization=e.utilization,
                requests_per_second=e.requests_per_second,
                tokens_per_second=e.tokens_per_second,
                characters_per_second=e.characters_per_second,
            )
            for e in message.engines
        ),
        utilization=message.utilization,
        requests_per_second=message.requests_per_second,
        cpu_utilization=message.cpu_utilization,
        open_calls=message.open_calls,
        draining=message.draining,
    )
