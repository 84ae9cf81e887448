"""Pure converters between the SDK's options and types and the rillet.v1 protos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import duration_pb2

from rillet.client._options import GenerateOptions, SynthesizeOptions, schema_text
from rillet.client._types import (
    AudioChunk,
    AudioEncoding,
    ChatMessage,
    Finished,
    FinishReason,
    Model,
    ModelKind,
    Priority,
    SpokenText,
    TextCapabilities,
    Timings,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
    WordTiming,
)
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2

Prompt = str | Sequence[int] | Sequence[ChatMessage]

_REASONS = {
    common_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    common_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    common_pb2.FINISH_REASON_STOP_SEQUENCE: FinishReason.STOP_SEQUENCE,
    common_pb2.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
}
_ENCODINGS = {
    AudioEncoding.LINEAR16: speech_pb2.AUDIO_ENCODING_LINEAR16,
    AudioEncoding.OGG_OPUS: speech_pb2.AUDIO_ENCODING_OGG_OPUS,
    AudioEncoding.MULAW: speech_pb2.AUDIO_ENCODING_MULAW,
    AudioEncoding.ALAW: speech_pb2.AUDIO_ENCODING_ALAW,
}
_PRIORITIES = {Priority.INTERACTIVE: common_pb2.PRIORITY_INTERACTIVE, Priority.BATCH: common_pb2.PRIORITY_BATCH}
_KINDS = {
    inference_service_pb2.Model.KIND_TEXT_GENERATION: ModelKind.TEXT_GENERATION,
    inference_service_pb2.Model.KIND_SPEECH_SYNTHESIS: ModelKind.SPEECH_SYNTHESIS,
}


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def chat_message(message: ChatMessage) -> generation_pb2.ChatMessage:
    return generation_pb2.ChatMessage(role=message.role, content=message.content)


def generate_params(prompt: Prompt, options: GenerateOptions) -> generation_pb2.GenerateParams:
    """The params of a generation: the prompt, and every option that is set (None leaves a field unset)."""
    params = generation_pb2.GenerateParams(
        model=options.model, stop=options.stop, max_tokens=options.max_tokens, top_logprobs=options.top_logprobs
    )
    if isinstance(prompt, str):
        params.text = prompt
    elif all(isinstance(item, ChatMessage) for item in prompt):
        params.chat.messages.extend(chat_message(m) for m in prompt if isinstance(m, ChatMessage))
        if not prompt:
            params.chat.SetInParent()
    else:
        params.token_ids.ids.extend(int(t) for t in prompt if isinstance(t, int))
    sampling = generation_pb2.SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        repetition_penalty=options.repetition_penalty,
        seed=options.seed,
    )
    if sampling.ByteSize():  # left out when no field is set
        params.sampling.CopyFrom(sampling)
    if options.priority is not None:
        params.priority = _PRIORITIES[options.priority]
    if options.json_schema is not None:
        params.json_schema = schema_text(options.json_schema)  # already its text: GenerateOptions keeps it so
    elif options.regex is not None:
        params.regex = options.regex
    elif options.grammar is not None:
        params.grammar = options.grammar
    elif options.choice is not None:
        params.choice.SetInParent()  # set even when empty: the server refuses an empty choice, never ignores it
        params.choice.options.extend(options.choice)
    elif options.json_object:
        params.json_object.SetInParent()
    return params


def synthesize_params(text: str, options: SynthesizeOptions) -> speech_pb2.SynthesizeParams:
    params = speech_pb2.SynthesizeParams(
        voice=options.voice,
        text=text,
        sample_rate_hertz=options.sample_rate_hertz,
        encoding=_ENCODINGS[options.encoding],
        word_timings=options.word_timings,
    )
    if options.max_chunk_s is not None:
        params.max_chunk_duration.CopyFrom(duration(options.max_chunk_s))
    if options.priority is not None:
        params.priority = _PRIORITIES[options.priority]
    return params


def start_generate(prompt: Prompt, options: GenerateOptions) -> inference_service_pb2.StartGenerate:
    """A session's start message for a generation."""
    return inference_service_pb2.StartGenerate(params=generate_params(prompt, options), **_request_fields(options))


def start_synthesize(
    text: str, options: SynthesizeOptions, *, streaming_input: bool = False, text_from_request_id: str = ""
) -> inference_service_pb2.StartSynthesize:
    """A session's start message for a synthesis (of `text`, of streamed input, or of another request's tokens)."""
    return inference_service_pb2.StartSynthesize(
        params=synthesize_params(text, options),
        streaming_input=streaming_input,
        text_from_request_id=text_from_request_id,
        **_request_fields(options),
    )


def _request_fields(options: GenerateOptions | SynthesizeOptions) -> dict[str, Any]:
    """What every start message carries: the trace context, and the request's own timeout when it has one."""
    fields: dict[str, Any] = {
        "trace_context": common_pb2.TraceContext(traceparent=options.traceparent, tracestate=options.tracestate)
    }
    if options.timeout is not None:
        fields["timeout"] = duration(options.timeout)
    return fields


def seconds(message: duration_pb2.Duration) -> float:
    return message.seconds + message.nanos / 1e9


def token_delta(message: generation_pb2.TokenDelta) -> TokenDelta:
    return TokenDelta(
        text=message.text,
        token_ids=tuple(message.token_ids),
        logprobs=tuple(
            TokenLogprobs(
                TokenLogprob(lp.token.token_id, lp.token.logprob),
                tuple(TokenLogprob(t.token_id, t.logprob) for t in lp.top),
            )
            for lp in message.logprobs
        ),
    )


def audio_chunk(message: speech_pb2.AudioChunk) -> AudioChunk:
    return AudioChunk(
        audio=message.audio,
        sample_rate_hertz=message.sample_rate_hertz,
        channel_count=message.channel_count,
        offset_samples=message.offset_samples,
        text=message.text,
        words=tuple(WordTiming(w.text, w.start_char, w.end_char, w.start_sample, w.end_sample) for w in message.words),
        sample_count=message.sample_count or None,  # unset by a server older than the field
    )


def finished(message: common_pb2.Finished) -> Finished:
    usage, timings = message.usage, message.timings
    return Finished(
        reason=_REASONS.get(message.reason, FinishReason.STOP),
        usage=Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            input_characters=usage.input_characters,
            output_audio_s=seconds(usage.output_audio_duration),
            cached_input_tokens=usage.cached_input_tokens,
        ),
        timings=Timings(
            queue_s=seconds(timings.queue_duration),
            prefill_s=seconds(timings.prefill_duration) if timings.HasField("prefill_duration") else None,
            time_to_first_output_s=seconds(timings.time_to_first_output)
            if timings.HasField("time_to_first_output")
            else None,
            total_s=seconds(timings.total_duration),
        ),
        stop_sequence=message.stop_sequence,
        spoken=_spoken(message.spoken) if message.HasField("spoken") else None,
    )


def _spoken(message: common_pb2.SpokenText) -> SpokenText:
    return SpokenText(message.text, message.start_char, message.end_char, message.played_samples)


def model(message: inference_service_pb2.Model) -> Model:
    return Model(
        name=message.name,
        kind=_KINDS.get(message.kind, ModelKind.TEXT_GENERATION),
        engine=message.engine,
        is_default=message.is_default,
        is_test_engine=message.is_test_engine,
        description=message.description,
        context_length=message.context_length,
        sample_rate_hertz=message.sample_rate_hertz,
        supports_chat=message.supports_chat,
        max_tokens_limit=message.max_tokens_limit,
        text_capabilities=_text_capabilities(message.text_capabilities)
        if message.HasField("text_capabilities")
        else None,
        word_timings=message.word_timings,
    )


def _text_capabilities(message: inference_service_pb2.TextCapabilities) -> TextCapabilities:
    return TextCapabilities(
        sampling_fields=frozenset(message.sampling_fields),
        reproducible_seed=message.reproducible_seed,
        logprobs=message.logprobs,
        sampled_logprobs=message.sampled_logprobs,
        constraint_kinds=frozenset(
            generation_pb2.ConstraintKind.Name(kind).removeprefix("CONSTRAINT_KIND_").lower()
            for kind in message.constraint_kinds
        ),
    )
