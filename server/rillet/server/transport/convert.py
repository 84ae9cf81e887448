"""Pure converters between rillet.v1 protos and domain types; unset optional fields become None."""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from rillet.server.errors import InvalidArgument, ResourceExhausted, RilletError
from rillet.server.types import (
    AppendText,
    AudioChunk,
    AudioEncoding,
    Cancel,
    ChatMessage,
    Command,
    EndInput,
    Failed,
    Finished,
    FinishReason,
    GenerateSpec,
    Malformed,
    ModelInfo,
    ModelKind,
    Output,
    Prompt,
    Start,
    SynthesizeSpec,
    Timings,
    TokenDelta,
    TraceContext,
    Usage,
)
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2

ERROR_DOMAIN = "rillet.dev"

_FINISH_REASONS = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
}
_MODEL_KINDS = {
    ModelKind.TEXT_GENERATION: inference_service_pb2.Model.KIND_TEXT_GENERATION,
    ModelKind.SPEECH_SYNTHESIS: inference_service_pb2.Model.KIND_SPEECH_SYNTHESIS,
}


# ---- proto → domain ------------------------------------------------------------------------------------------


def generate_spec(params: generation_pb2.GenerateParams) -> GenerateSpec:
    prompt: Prompt | None
    match params.WhichOneof("prompt"):
        case "text":
            prompt = params.text
        case "token_ids":
            prompt = tuple(params.token_ids.ids)
        case "chat":
            prompt = tuple(ChatMessage(m.role, m.content) for m in params.chat.messages)
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
        stop=tuple(params.stop),
        top_logprobs=params.top_logprobs if params.HasField("top_logprobs") else None,
    )


def synthesize_spec(
    params: speech_pb2.SynthesizeParams, *, streaming_input: bool = False, text_from_request_id: str = ""
) -> SynthesizeSpec:
    encoding: AudioEncoding | None = None
    unknown: int | None = None
    if params.encoding == speech_pb2.AUDIO_ENCODING_LINEAR16:
        encoding = AudioEncoding.LINEAR16
    elif params.encoding != speech_pb2.AUDIO_ENCODING_UNSPECIFIED:
        unknown = params.encoding
    return SynthesizeSpec(
        voice=params.voice,
        text=params.text,
        sample_rate_hertz=params.sample_rate_hertz,
        encoding=encoding,
        unknown_encoding=unknown,
        max_chunk_seconds=params.max_chunk_duration.ToTimedelta().total_seconds()
        if params.HasField("max_chunk_duration")
        else None,
        streaming_input=streaming_input,
        text_from_request_id=text_from_request_id,
    )


def _trace(message: common_pb2.TraceContext) -> TraceContext | None:
    return TraceContext(message.traceparent, message.tracestate) if message.traceparent else None


def _seconds(message: duration_pb2.Duration) -> float:
    return message.seconds + message.nanos / 1e9


def session_command(message: inference_service_pb2.SessionRequest) -> Command:
    """Convert one client message; a message with no kind becomes Malformed (answered with `rejected`)."""
    request_id = message.request_id
    match message.WhichOneof("kind"):
        case "start_generate":
            start = message.start_generate
            return Start(
                request_id,
                generate_spec(start.params),
                _trace(start.trace_context),
                _seconds(start.timeout) if start.HasField("timeout") else None,
            )
        case "start_synthesize":
            synth = message.start_synthesize
            return Start(
                request_id,
                synthesize_spec(
                    synth.params, streaming_input=synth.streaming_input, text_from_request_id=synth.text_from_request_id
                ),
                _trace(synth.trace_context),
                _seconds(synth.timeout) if synth.HasField("timeout") else None,
            )
        case "append_text":
            return AppendText(request_id, message.append_text.text)
        case "end_input":
            return EndInput(request_id)
        case "cancel":
            return Cancel(request_id)
        case _:
            return Malformed(
                request_id,
                InvalidArgument("the message has no kind set", field="kind", reason="MISSING_KIND"),
            )


# ---- domain → proto ------------------------------------------------------------------------------------------


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def token_delta(delta: TokenDelta) -> generation_pb2.TokenDelta:
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
        audio=chunk.pcm,
        sample_rate_hertz=chunk.sample_rate_hertz,
        channel_count=chunk.channel_count,
        offset_samples=chunk.offset_samples,
        text=chunk.text,
    )


def _usage(usage: Usage) -> common_pb2.Usage:
    message = common_pb2.Usage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, input_characters=usage.input_characters
    )
    if usage.output_audio_seconds:
        message.output_audio_duration.CopyFrom(_duration(usage.output_audio_seconds))
    return message


def _timings(timings: Timings) -> common_pb2.Timings:
    message = common_pb2.Timings(queue_duration=_duration(timings.queue), total_duration=_duration(timings.total))
    if timings.prefill is not None:
        message.prefill_duration.CopyFrom(_duration(timings.prefill))
    if timings.time_to_first_output is not None:
        message.time_to_first_output.CopyFrom(_duration(timings.time_to_first_output))
    return message


def finished(result: Finished) -> common_pb2.Finished:
    return common_pb2.Finished(
        reason=_FINISH_REASONS[result.reason],
        usage=_usage(result.usage),
        timings=_timings(result.timings),
        stop_sequence=result.stop_sequence,
    )


def status(error: RilletError) -> status_pb2.Status:
    """google.rpc.Status with ErrorInfo (AIP-193) and, for RESOURCE_EXHAUSTED, RetryInfo."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    details = [info]
    if isinstance(error, ResourceExhausted):
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after)))
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
    )
