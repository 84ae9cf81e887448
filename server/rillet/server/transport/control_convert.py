"""Pure converters between ControlService's messages and the control plane's domain types (control.py, load.py)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from rillet.server.config import Settings
from rillet.server.control import EngineInfo, ServerInfo, TextOrChat
from rillet.server.errors import InvalidArgument
from rillet.server.load import EngineLoad, ServerLoad
from rillet.server.reasons import Reason
from rillet.server.transport import convert
from rillet.server.types import ChatMessage, ModelKind
from rillet.v1 import control_service_pb2 as pb
from rillet.v1 import inference_service_pb2

_KINDS = {
    ModelKind.TEXT_GENERATION: inference_service_pb2.Model.KIND_TEXT_GENERATION,
    ModelKind.SPEECH_SYNTHESIS: inference_service_pb2.Model.KIND_SPEECH_SYNTHESIS,
}
DEFAULT_WATCH_INTERVAL_S = 1.0


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def prompt(message: pb.TokenizeRequest | pb.CountTokensRequest, max_chat_messages: int) -> TextOrChat | None:
    """The request's prompt (None when none is set); a chat keeps at most one message past its limit, as generation."""
    match message.WhichOneof("prompt"):
        case "text":
            return message.text
        case "chat":
            return tuple(ChatMessage(m.role, m.content) for m in message.chat.messages[: max_chat_messages + 1])
    return None


def watch_interval(message: pb.WatchLoadRequest, low_s: float, high_s: float) -> float:
    """WatchLoad's interval: the asked one (unset: 1 s) clamped into [low_s, high_s]."""
    if not message.HasField("interval"):
        return min(max(DEFAULT_WATCH_INTERVAL_S, low_s), high_s)
    interval = message.interval
    if interval.seconds < 0 or interval.nanos < 0:
        raise InvalidArgument("interval must not be negative", field="interval", reason=Reason.INVALID_DURATION)
    return min(max(interval.seconds + interval.nanos / 1e9, low_s), high_s)


def abort_target(message: pb.AbortRequest) -> str | None:
    """The request id to abort, or None for all the tenant's requests; InvalidArgument when neither is set."""
    match message.WhichOneof("target"):
        case "request_id":
            if not message.request_id:
                raise InvalidArgument(
                    "request_id must not be empty", field="request_id", reason=Reason.MISSING_REQUEST_ID
                )
            return message.request_id
        case "all_requests":
            return None
    raise InvalidArgument("set request_id or all_requests", field="target", reason=Reason.MISSING_TARGET)


def server_info(info: ServerInfo, settings: Settings) -> pb.GetServerInfoResponse:
    limits, load = settings.limits, settings.load
    message = pb.GetServerInfoResponse(
        version=info.version,
        engines=[engine_info(e) for e in info.engines],
        models=[convert.model(model, default) for model, default in info.models],
        draining=info.draining,
        start_time=_timestamp(info.start_time),
        limits=pb.ServerLimits(
            max_tokens=limits.max_tokens,
            max_prompt_chars=limits.max_prompt_chars,
            max_requests_per_session=limits.max_requests_per_session,
            max_queue=settings.scheduler.max_queue,
            max_message_bytes=settings.max_message_bytes,
            min_load_interval=convert.duration(load.min_interval_s),
            max_load_interval=convert.duration(load.max_interval_s),
        ),
    )
    if settings.max_connection_age_s is not None:
        message.limits.max_connection_age.CopyFrom(convert.duration(settings.max_connection_age_s))
    return message


def engine_info(info: EngineInfo) -> pb.EngineInfo:
    return pb.EngineInfo(
        name=info.name,
        kind=_KINDS[info.kind],
        slots=info.slots,
        is_test_engine=info.is_test_engine,
        tokenizer=info.tokenizer,
        reports_kv_cache=info.reports_kv_cache,
    )


def server_load(load: ServerLoad) -> pb.ServerLoad:
    return pb.ServerLoad(
        time=_timestamp(load.time),
        engines=[engine_load(e) for e in load.engines],
        utilization=load.utilization,
        requests_per_second=load.requests_per_second,
        cpu_utilization=load.cpu_utilization,
        open_calls=load.open_calls,
        draining=load.draining,
    )


def engine_load(load: EngineLoad) -> pb.EngineLoad:
    return pb.EngineLoad(
        engine=load.engine,
        kind=_KINDS[load.kind],
        running=load.running,
        waiting=load.waiting,
        waiting_batch=load.waiting_batch,
        slots=load.slots,
        kv_cache_utilization=load.kv_cache_utilization,
        utilization=load.utilization,
        requests_per_second=load.requests_per_second,
        tokens_per_second=load.tokens_per_second,
        characters_per_second=load.characters_per_second,
    )
