"""Pure converters between rillet.v1 protos and domain types; unset optional fields become None.

Client input arrives as raw bytes: `parse` turns a frame that is not a valid message into InvalidArgument
(UNDECODABLE_MESSAGE), and the converters raise nothing but RilletError, so no Python exception of a bad message
reaches gRPC. `session_command` never raises at all: what it cannot apply becomes a Malformed command.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from rillet.server.config import LimitsConfig
from rillet.server.errors import InvalidArgument, ResourceExhausted, RilletError, clip
from rillet.server.reasons import Reason
from rillet.server.types import (
    SAMPLING_FIELDS,
    AppendText,
    AudioChunk,
    AudioEncoding,
    Cancel,
    ChatMessage,
    Command,
    Constraint,
    ConstraintKind,
    EndInput,
    Failed,
    Finished,
    FinishReason,
    GenerateSpec,
    Malformed,
    ModelInfo,
    ModelKind,
    Output,
    Priority,
    Prompt,
    SpokenText,
    Start,
    SynthesizeSpec,
    TextCapabilities,
    Timings,
    TokenDelta,
    TraceContext,
    Usage,
    WordTiming,
)
from rillet.server.validation import check_id_length
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2

ERROR_DOMAIN = "rillet.dev"

MAX_DURATION_SECONDS = 315_576_000_000
"""The range google.protobuf.Duration documents (±10,000 years); beyond it a Duration is invalid."""
MAX_TRACEPARENT_CHARS = 256
MAX_TRACESTATE_CHARS = 512
"""W3C trace context bounds (tracestate: 512 characters); a context beyond them is ignored, as W3C asks of an
invalid one, and the request goes on untraced."""

M = TypeVar("M", bound=Message)

_FINISH_REASONS = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
}
_ENCODINGS = {
    speech_pb2.AUDIO_ENCODING_LINEAR16: AudioEncoding.LINEAR16,
    speech_pb2.AUDIO_ENCODING_OGG_OPUS: AudioEncoding.OGG_OPUS,
    speech_pb2.AUDIO_ENCODING_MULAW: AudioEncoding.MULAW,
    speech_pb2.AUDIO_ENCODING_ALAW: AudioEncoding.ALAW,
}
_PRIORITIES: dict[int, Priority] = {
    common_pb2.PRIORITY_UNSPECIFIED: Priority.INTERACTIVE,
    common_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    common_pb2.PRIORITY_BATCH: Priority.BATCH,
}
_MODEL_KINDS = {
    ModelKind.TEXT_GENERATION: inference_service_pb2.Model.KIND_TEXT_GENERATION,
    ModelKind.SPEECH_SYNTHESIS: inference_service_pb2.Model.KIND_SPEECH_SYNTHESIS,
}


# ---- proto → domain ------------------------------------------------------------------------------------------


def parse(data: bytes, message_type: type[M]) -> M:
    """Parse one client frame; InvalidArgument (UNDECODABLE_MESSAGE) when it is not a valid `message_type`.

    Invalid UTF-8 in a string field, a truncated or mis-typed field and stray end-group tags all fail here.
    """
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        detail = str(error).rpartition(": ")[2]  # protobuf's own short cause, e.g. "String field had bad UTF-8"
        raise InvalidArgument(
            f"the message is not a valid {message_type.DESCRIPTOR.full_name}: {clip(detail)}",
            reason=Reason.UNDECODABLE_MESSAGE,
        ) from None
    return message


def parse_json(text: str, message_type: type[M]) -> M:
    """Parse one client frame in the protobuf JSON mapping; InvalidArgument (UNDECODABLE_MESSAGE) when it is not one.

    Unknown fields are refused, not skipped: a field the server does not know is a field it would ignore.
    """
    try:
        return json_format.Parse(text, message_type(), max_recursion_depth=32)
    except (json_format.ParseError, RecursionError) as error:
        raise InvalidArgument(
            f"the message is not a valid {message_type.DESCRIPTOR.full_name} in JSON: {clip(str(error))}",
            reason=Reason.UNDECODABLE_MESSAGE,
        ) from None


def _seconds(message: duration_pb2.Duration, field: str) -> float:
    """A Duration's seconds; InvalidArgument when it breaks the Duration's own rules (range, nanos and sign)."""
    seconds, nanos = message.seconds, message.nanos
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) >= 1_000_000_000 or seconds * nanos < 0:
        raise InvalidArgument(
            f"{field} is not a valid google.protobuf.Duration", field=field, reason=Reason.INVALID_DURATION
        )
    return seconds + nanos / 1e9


def priority(value: int, field: str) -> Priority:
    """The admission class a rillet.v1.Priority number names; InvalidArgument (UNKNOWN_PRIORITY) for any other."""
    found = _PRIORITIES.get(value)
    if found is None:
        raise InvalidArgument(f"{field} = {value} is not a known priority", field=field, reason=Reason.UNKNOWN_PRIORITY)
    return found


def generate_spec(params: generation_pb2.GenerateParams, limits: LimitsConfig) -> GenerateSpec:
    """The spec as sent, except that a repeated field keeps at most one item past its limit.

    That is enough for validation to refuse it, and bounds the work a huge message makes: turning 400,000 chat
    messages into objects took 340 ms; a limit's worth (1,025) takes about one.
    """
    prompt: Prompt | None
    match params.WhichOneof("prompt"):
        case "text":
            prompt = params.text
        case "token_ids":
            prompt = tuple(params.token_ids.ids[: limits.max_prompt_token_ids + 1])
        case "chat":
            messages = params.chat.messages[: limits.max_chat_messages + 1]
            prompt = tuple(ChatMessage(m.role, m.content) for m in messages)
        case _:
            prompt = None
    sampling = params.sampling
    return GenerateSpec(
        model=params.model,
        prompt=prompt,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        temperature=sampling.temperature if sampling.HasField("temperature") else None,
        top_p=sampling.top_p if sampling.HasField("top_p") else None,
        top_k=sampling.top_k if sampling.HasField("top_k") else None,
        min_p=sampling.min_p if sampling.HasField("min_p") else None,
        repetition_penalty=sampling.repetition_penalty if sampling.HasField("repetition_penalty") else None,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop=tuple(params.stop[: limits.max_stop_strings + 1]),
        top_logprobs=params.top_logprobs if params.HasField("top_logprobs") else None,
        constraint=constraint(params, limits),
        priority=priority(params.priority, "params.priority"),
    )


def constraint(params: generation_pb2.GenerateParams, limits: LimitsConfig) -> Constraint | None:
    """The request's output constraint, if any (a choice cut one option past its limit, as stop strings are)."""
    kind = params.WhichOneof("constraint")
    if kind is None:
        return None
    if kind == "choice":
        return Constraint(ConstraintKind.CHOICE, choices=tuple(params.choice.options[: limits.max_choices + 1]))
    if kind == "json_object":
        return Constraint(ConstraintKind.JSON_OBJECT)
    return Constraint(ConstraintKind(kind), text=getattr(params, kind))


def synthesize_spec(
    params: speech_pb2.SynthesizeParams, *, streaming_input: bool = False, text_from_request_id: str = ""
) -> SynthesizeSpec:
    encoding = _ENCODINGS.get(params.encoding)
    unknown = params.encoding if encoding is None and params.encoding != speech_pb2.AUDIO_ENCODING_UNSPECIFIED else None
    return SynthesizeSpec(
        voice=params.voice,
        text=params.text,
        sample_rate_hertz=params.sample_rate_hertz,
        encoding=encoding,
        unknown_encoding=unknown,
        max_chunk_seconds=_seconds(params.max_chunk_duration, "params.max_chunk_duration")
        if params.HasField("max_chunk_duration")
        else None,
        streaming_input=streaming_input,
        text_from_request_id=text_from_request_id,
        word_timings=params.word_timings,
        priority=priority(params.priority, "params.priority"),
    )


def _trace(message: common_pb2.TraceContext) -> TraceContext | None:
    if not message.traceparent:
        return None
    if len(message.traceparent) > MAX_TRACEPARENT_CHARS or len(message.tracestate) > MAX_TRACESTATE_CHARS:
        return None
    return TraceContext(message.traceparent, message.tracestate)


def _timeout(message: inference_service_pb2.StartGenerate | inference_service_pb2.StartSynthesize) -> float | None:
    return _seconds(message.timeout, "timeout") if message.HasField("timeout") else None


def session_command(message: inference_service_pb2.SessionRequest, limits: LimitsConfig) -> Command:
    """Convert one client message. Never raises: what cannot be applied becomes Malformed (answered `rejected`).

    Invariant (enforced here, for every message kind): no command carries a request id longer than
    `limits.max_request_id_chars`; a longer one becomes Malformed under a clipped id, so nothing downstream holds
    or echoes a client's huge id.
    """
    request_id = message.request_id
    try:
        check_id_length(request_id, limits)
    except RilletError as error:
        return Malformed(clip(request_id), error)
    try:
        return _command(message, limits)
    except RilletError as error:
        return Malformed(request_id, error)


def _command(message: inference_service_pb2.SessionRequest, limits: LimitsConfig) -> Command:
    request_id = message.request_id
    match message.WhichOneof("kind"):
        case "start_generate":
            start = message.start_generate
            return Start(request_id, generate_spec(start.params, limits), _trace(start.trace_context), _timeout(start))
        case "start_synthesize":
            synth = message.start_synthesize
            spec = synthesize_spec(
                synth.params, streaming_input=synth.streaming_input, text_from_request_id=synth.text_from_request_id
            )
            return Start(request_id, spec, _trace(synth.trace_context), _timeout(synth))
        case "append_text":
            return AppendText(request_id, message.append_text.text)  # the session checks it (validate_text_piece)
        case "end_input":
            return EndInput(request_id)
        case "cancel":
            cancel = message.cancel
            return Cancel(request_id, cancel.played_samples if cancel.HasField("played_samples") else None)
        case _:
            raise InvalidArgument("the message has no kind set", field="kind", reason=Reason.MISSING_KIND)


# ---- domain → proto ------------------------------------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    # divmod floors, so a negative duration keeps nanos in [0, 1e9), as FromNanoseconds would normalize it
    whole, nanos = divmod(round(seconds * 1e9), 1_000_000_000)
    if whole < 0 and nanos:  # Duration's sign rule: seconds and nanos share the sign
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def token_delta(delta: TokenDelta) -> generation_pb2.TokenDelta:
    if not delta.logprobs:  # the common case, once per token: no empty list built and copied
        return generation_pb2.TokenDelta(text=delta.text, token_ids=delta.token_ids)
    return generation_pb2.TokenDelta(
        text=delta.text,
        token_ids=delta.token_ids,
        logprobs=[
            generation_pb2.TokenLogprobs(
                token=generation_pb2.TokenLogprob(token_id=lp.token.token_id, logprob=lp.token.logprob),
                top=[generation_pb2.TokenLogprob(token_id=t.token_id, logprob=t.logprob) for t in lp.top],
            )
            for lp in delta.logprobs
        ],
    )


def audio_chunk(chunk: AudioChunk) -> speech_pb2.AudioChunk:
    return speech_pb2.AudioChunk(
        audio=chunk.audio,
        sample_rate_hertz=chunk.sample_rate_hertz,
        channel_count=chunk.channel_count,
        offset_samples=chunk.offset_samples,
        text=chunk.text,
        words=[word_timing(word) for word in chunk.words] if chunk.words else None,
        sample_count=chunk.samples,
    )


def word_timing(word: WordTiming) -> speech_pb2.WordTiming:
    return speech_pb2.WordTiming(
        text=word.text,
        start_char=word.start_char,
        end_char=word.end_char,
        start_sample=word.start_sample,
        end_sample=word.end_sample,
    )


def spoken_text(spoken: SpokenText) -> common_pb2.SpokenText:
    return common_pb2.SpokenText(
        text=spoken.text, start_char=spoken.start_char, end_char=spoken.end_char, played_samples=spoken.played_samples
    )


def _usage(usage: Usage) -> common_pb2.Usage:
    message = common_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        input_characters=usage.input_characters,
        cached_input_tokens=usage.cached_input_tokens,
    )
    if usage.output_audio_seconds:
        message.output_audio_duration.CopyFrom(duration(usage.output_audio_seconds))
    return message


def _timings(timings: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(
        queue_duration=duration(timings.queue),
        total_duration=duration(timings.total),
        prefill_duration=duration(timings.prefill) if timings.prefill is not None else None,
        time_to_first_output=(
            duration(timings.time_to_first_output) if timings.time_to_first_output is not None else None
        ),
    )


def finished(result: Finished) -> common_pb2.Finished:
    return common_pb2.Finished(
        reason=_FINISH_REASONS[result.reason],
        usage=_usage(result.usage),
        timings=_timings(result.timings),
        stop_sequence=result.stop_sequence,
        spoken=spoken_text(result.spoken) if result.spoken is not None else None,
    )


def status(error: RilletError) -> status_pb2.Status:
    """google.rpc.Status with ErrorInfo (AIP-193) and, for RESOURCE_EXHAUSTED, RetryInfo."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    details = [info]
    if isinstance(error, ResourceExhausted):
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration(error.retry_after)))
        details.append(retry)
    return status_pb2.Status(code=int(error.code), message=error.message, details=details)


def session_response(output: Output) -> inference_service_pb2.SessionResponse:
    message = inference_service_pb2.SessionResponse(request_id=output.request_id, seq=output.seq)
    payload = output.payload
    if isinstance(payload, TokenDelta):
        message.token_delta.CopyFrom(token_delta(payload))
    elif isinstance(payload, AudioChunk):
        message.audio_chunk.CopyFrom(audio_chunk(payload))
    elif isinstance(payload, Finished):
        message.finished.CopyFrom(finished(payload))
    elif isinstance(payload, Failed):
        message.error.CopyFrom(status(payload.error))
    else:
        message.rejected.CopyFrom(status(payload.error))
        message.client_message_index = payload.message_index
    return message


def generate_response(output: Output) -> inference_service_pb2.GenerateResponse:
    payload = output.payload
    if isinstance(payload, TokenDelta):
        return inference_service_pb2.GenerateResponse(seq=output.seq, token_delta=token_delta(payload))
    if isinstance(payload, Finished):
        return inference_service_pb2.GenerateResponse(seq=output.seq, finished=finished(payload))
    raise TypeError(f"a Generate stream cannot carry {type(payload).__name__}")


def synthesize_response(output: Output) -> inference_service_pb2.SynthesizeResponse:
    payload = output.payload
    if isinstance(payload, AudioChunk):
        return inference_service_pb2.SynthesizeResponse(seq=output.seq, audio_chunk=audio_chunk(payload))
    if isinstance(payload, Finished):
        return inference_service_pb2.SynthesizeResponse(seq=output.seq, finished=finished(payload))
    raise TypeError(f"a Synthesize stream cannot carry {type(payload).__name__}")


def model(info: ModelInfo, is_default: bool) -> inference_service_pb2.Model:
    return inference_service_pb2.Model(
        name=info.name,
        kind=_MODEL_KINDS[info.kind],
        engine=info.engine,
        is_default=is_default,
        is_test_engine=info.is_test_engine,
        description=info.description,
        context_length=info.context_length,
        sample_rate_hertz=info.sample_rate_hertz,
        supports_chat=info.supports_chat,
        max_tokens_limit=info.max_tokens_limit,
        text_capabilities=text_capabilities(info.capabilities) if info.capabilities is not None else None,
        word_timings=info.word_timings,
    )


def text_capabilities(capabilities: TextCapabilities) -> inference_service_pb2.TextCapabilities:
    return inference_service_pb2.TextCapabilities(
        sampling_fields=[name for name in SAMPLING_FIELDS if name in capabilities.sampling],
        reproducible_seed=capabilities.reproducible_seed,
        logprobs=capabilities.logprobs,
        sampled_logprobs=capabilities.sampled_logprobs,
        constraint_kinds=sorted(_CONSTRAINT_KINDS[kind] for kind in capabilities.constraints),
    )


_CONSTRAINT_KINDS = {
    kind: generation_pb2.ConstraintKind.Value(f"CONSTRAINT_KIND_{kind.name}") for kind in ConstraintKind
}
