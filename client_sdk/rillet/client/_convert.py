"""Pure converters between the SDK's keyword arguments and types and the rillet.v1 protos."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import duration_pb2

from rillet.client._types import (
    AudioChunk,
    ChatMessage,
    Finished,
    FinishReason,
    Model,
    ModelKind,
    TextCapabilities,
    Timings,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2

Prompt = str | Sequence[int] | Sequence[ChatMessage]

_REASONS = {
    common_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    common_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    common_pb2.FINISH_REASON_STOP_SEQUENCE: FinishReason.STOP_SEQUENCE,
    common_pb2.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
}
_KINDS = {
    inference_service_pb2.Model.KIND_TEXT_GENERATION: ModelKind.TEXT_GENERATION,
    inference_service_pb2.Model.KIND_SPEECH_SYNTHESIS: ModelKind.SPEECH_SYNTHESIS,
}


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def generate_params(
    prompt: Prompt,
    *,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    min_p: float | None,
    repetition_penalty: float | None,
    seed: int | None,
    stop: Sequence[str],
    top_logprobs: int | None,
) -> generation_pb2.GenerateParams:
    params = generation_pb2.GenerateParams(model=model, stop=list(stop))
    if isinstance(prompt, str):
        params.text = prompt
    elif all(isinstance(item, ChatMessage) for item in prompt):
        params.chat.messages.extend(
            generation_pb2.ChatMessage(role=m.role, content=m.content) for m in prompt if isinstance(m, ChatMessage)
        )
        if not prompt:
            params.chat.SetInParent()
    else:
        params.token_ids.ids.extend(int(t) for t in prompt if isinstance(t, int))
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if top_logprobs is not None:
        params.top_logprobs = top_logprobs
    sampling = params.sampling
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if top_k is not None:
        sampling.top_k = top_k
    if min_p is not None:
        sampling.min_p = min_p
    if repetition_penalty is not None:
        sampling.repetition_penalty = repetition_penalty
    if seed is not None:
        sampling.seed = seed
    return params


def synthesize_params(
    text: str, *, voice: str, sample_rate_hertz: int, max_chunk_s: float | None
) -> speech_pb2.SynthesizeParams:
    params = speech_pb2.SynthesizeParams(
        voice=voice, text=text, sample_rate_hertz=sample_rate_hertz, encoding=speech_pb2.AUDIO_ENCODING_LINEAR16
    )
    if max_chunk_s is not None:
        params.max_chunk_duration.CopyFrom(duration(max_chunk_s))
    return params


def _seconds(message: duration_pb2.Duration) -> float:
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
    )


def finished(message: common_pb2.Finished) -> Finished:
    usage, timings = message.usage, message.timings
    return Finished(
        reason=_REASONS.get(message.reason, FinishReason.STOP),
        usage=Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            input_characters=usage.input_characters,
            output_audio_s=_seconds(usage.output_audio_duration),
            cached_input_tokens=usage.cached_input_tokens,
        ),
        timings=Timings(
            queue_s=_seconds(timings.queue_duration),
            prefill_s=_seconds(timings.prefill_duration) if timings.HasField("prefill_duration") else None,
            time_to_first_output_s=_seconds(timings.time_to_first_output)
            if timings.HasField("time_to_first_output")
            else None,
            total_s=_seconds(timings.total_duration),
        ),
        stop_sequence=message.stop_sequence,
    )


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
