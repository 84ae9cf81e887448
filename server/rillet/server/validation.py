"""Turns client specs into validated engine requests: limits, ranges, defaults and model resolution.

Every field a client sends is bounded here or, for request ids, at the transport's edge; no message repeats more
of a client's string than `clip` allows.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence

from rillet.server.audio import OPUS_RATE
from rillet.server.config import LimitsConfig
from rillet.server.errors import InvalidArgument, clip
from rillet.server.reasons import Reason
from rillet.server.scheduler import Router, SpeechRoute, TextRoute
from rillet.server.types import (
    AudioEncoding,
    AudioOutput,
    ChatMessage,
    Constraint,
    ConstraintKind,
    GenerateSpec,
    GenerationRequest,
    ModelKind,
    Prompt,
    SamplingParams,
    SynthesisRequest,
    SynthesizeSpec,
    TraceContext,
)


def check_id_length(request_id: str, limits: LimitsConfig, field: str = "request_id") -> None:
    """A request id (of any message kind, or one a start refers to) within `limits.max_request_id_chars`."""
    if len(request_id) > limits.max_request_id_chars:
        raise InvalidArgument(
            f"{field} has {len(request_id)} characters; the limit is {limits.max_request_id_chars}",
            field=field,
            reason=Reason.REQUEST_ID_TOO_LONG,
        )


def validate_request_id(request_id: str, limits: LimitsConfig) -> None:
    if not request_id:
        raise InvalidArgument("request_id must not be empty", field="request_id", reason=Reason.MISSING_REQUEST_ID)
    check_id_length(request_id, limits)


def validate_text_piece(text: str, limits: LimitsConfig) -> None:
    """One AppendText message's text: bounded, and free of NUL (which the speech engines cannot take)."""
    if len(text) > limits.max_text_piece_chars:
        raise InvalidArgument(
            f"the text piece has {len(text)} characters; the limit is {limits.max_text_piece_chars}",
            field="append_text.text",
            reason=Reason.TEXT_PIECE_TOO_LARGE,
        )
    _check_no_nul(text, "append_text.text")


def _check_no_nul(text: str, field: str) -> None:
    if "\0" in text:
        raise InvalidArgument(f"{field} contains a NUL character", field=field, reason=Reason.NUL_CHARACTER)


def _check_name(name: str, field: str, limits: LimitsConfig) -> None:
    if len(name) > limits.max_name_chars:
        raise InvalidArgument(
            f"{field} {clip(name)!r} is longer than {limits.max_name_chars} characters",
            field=field,
            reason=Reason.NAME_TOO_LONG,
        )


def _check_chat(messages: tuple[ChatMessage, ...], limits: LimitsConfig) -> None:
    if len(messages) > limits.max_chat_messages:
        raise InvalidArgument(
            f"the chat prompt has more than {limits.max_chat_messages} messages",
            field="params.chat",
            reason=Reason.TOO_MANY_CHAT_MESSAGES,
        )
    if any(len(m.role) > limits.max_chat_role_chars for m in messages):
        raise InvalidArgument(
            f"a chat role is longer than {limits.max_chat_role_chars} characters",
            field="params.chat.role",
            reason=Reason.CHAT_ROLE_TOO_LONG,
        )
    if sum(len(m.content) + len(m.role) for m in messages) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"the chat prompt exceeds {limits.max_prompt_chars} characters",
            field="params.chat",
            reason=Reason.PROMPT_TOO_LARGE,
        )


def _check_range(name: str, value: float | None, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    below = value <= low if low_open else value < low
    if math.isnan(value) or below or value > high:
        bracket = "(" if low_open else "["
        raise InvalidArgument(
            f"sampling.{name} = {value} is outside {bracket}{low:g}, {high:g}]",
            field=f"params.sampling.{name}",
            reason=Reason.SAMPLING_OUT_OF_RANGE,
        )


def _check_constraint(constraint: Constraint, limits: LimitsConfig) -> None:
    """The bounds of an output constraint; whether it parses and compiles is the engine's (constraints.py)."""
    field = f"params.{constraint.kind.value}"
    if constraint.kind is ConstraintKind.CHOICE:
        if not constraint.choices:
            raise InvalidArgument("a choice needs at least one option", field=field, reason=Reason.CONSTRAINT_INVALID)
        if len(constraint.choices) > limits.max_choices:
            raise InvalidArgument(
                f"a choice has more than {limits.max_choices} options", field=field, reason=Reason.CONSTRAINT_TOO_LARGE
            )
        if not all(constraint.choices):
            raise InvalidArgument("a choice's options must not be empty", field=field, reason=Reason.CONSTRAINT_INVALID)
        size = sum(len(option) for option in constraint.choices)
    elif constraint.kind is ConstraintKind.JSON_OBJECT:
        return
    else:
        if not constraint.text:
            raise InvalidArgument(f"{field} must not be empty", field=field, reason=Reason.CONSTRAINT_INVALID)
        size = len(constraint.text)
    if size > limits.max_constraint_chars:
        raise InvalidArgument(
            f"{field} has {size} characters; the limit is {limits.max_constraint_chars}",
            field=field,
            reason=Reason.CONSTRAINT_TOO_LARGE,
        )


def check_prompt(prompt: Prompt | None, limits: LimitsConfig, route: TextRoute) -> Prompt:
    """A prompt within the limits, of a kind the model reads (chat only with a chat template); the prompt itself.

    Generation and the tokenizer RPCs (control.py) check prompts here alike, so they fail the same way.
    """
    if prompt is None or len(prompt) == 0:
        raise InvalidArgument("the prompt must not be empty", field="params.prompt", reason=Reason.EMPTY_PROMPT)
    if isinstance(prompt, str):
        if len(prompt) > limits.max_prompt_chars:
            raise InvalidArgument(
                f"the prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}",
                field="params.prompt",
                reason=Reason.PROMPT_TOO_LARGE,
            )
    elif isinstance(prompt[0], int):  # tuples are homogeneous (the converter builds them): O(1), not a scan
        if len(prompt) > limits.max_prompt_token_ids:
            raise InvalidArgument(
                f"the prompt has more than {limits.max_prompt_token_ids} token ids",
                field="params.token_ids",
                reason=Reason.PROMPT_TOO_LARGE,
            )
        if min(prompt) < 0:
            raise InvalidArgument(
                "token ids must not be negative", field="params.token_ids", reason=Reason.TOKEN_ID_OUT_OF_RANGE
            )
    else:
        _check_chat(prompt, limits)
        if not route.model.supports_chat:
            raise InvalidArgument(
                f"model {route.model.name!r} has no chat template; send a text or token-id prompt",
                field="params.chat",
                reason=Reason.CHAT_TEMPLATE_MISSING,
            )
    return prompt


def validate_tokenizer_prompt(
    model: str, prompt: Prompt | None, limits: LimitsConfig, router: Router
) -> tuple[TextRoute, Prompt]:
    """A Tokenize or CountTokens request: the model resolved and the prompt checked as generation checks it."""
    _check_name(model, "model", limits)
    route = router.resolve(model, ModelKind.TEXT_GENERATION)
    return route, check_prompt(prompt, limits, route)


def validate_token_ids(model: str, token_ids: Sequence[int], limits: LimitsConfig, router: Router) -> TextRoute:
    """A Detokenize request: the model resolved, the ids present, not negative, and within the prompt's id limit."""
    _check_name(model, "model", limits)
    route = router.resolve(model, ModelKind.TEXT_GENERATION)
    if not token_ids:
        raise InvalidArgument("token_ids must not be empty", field="token_ids", reason=Reason.EMPTY_PROMPT)
    if len(token_ids) > limits.max_prompt_token_ids:
        raise InvalidArgument(
            f"more than {limits.max_prompt_token_ids} token ids", field="token_ids", reason=Reason.PROMPT_TOO_LARGE
        )
    if min(token_ids) < 0:
        raise InvalidArgument("token ids must not be negative", field="token_ids", reason=Reason.TOKEN_ID_OUT_OF_RANGE)
    return route


def validate_generate(
    request_id: str,
    spec: GenerateSpec,
    limits: LimitsConfig,
    router: Router,
    cache_scope: str = "",
    trace: TraceContext | None = None,
) -> tuple[TextRoute, GenerationRequest]:
    """Resolve the model and check every field; raises InvalidArgument or NotFound naming the field.

    Fields the model does not honour (its ModelInfo.capabilities) are refused too. `cache_scope` is the caller's
    (GenerationRequest.cache_scope), `trace` the request's trace context (GenerationRequest.trace).

    Repeated fields may arrive cut one item past their limit (see convert.generate_spec): messages say "more than".
    """
    _check_name(spec.model, "params.model", limits)
    route = router.resolve(spec.model, ModelKind.TEXT_GENERATION)
    prompt = check_prompt(spec.prompt, limits, route)
    limit = min(limits.max_tokens, route.model.max_tokens_limit or limits.max_tokens)
    max_tokens = spec.max_tokens if spec.max_tokens is not None else min(limits.default_max_tokens, limit)
    if not 1 <= max_tokens <= limit:
        raise InvalidArgument(
            f"max_tokens = {max_tokens} is outside [1, {limit}]",
            field="params.max_tokens",
            reason=Reason.MAX_TOKENS_OUT_OF_RANGE,
        )
    _check_range("temperature", spec.temperature, 0.0, 2.0)
    _check_range("top_p", spec.top_p, 0.0, 1.0, low_open=True)
    _check_range("min_p", spec.min_p, 0.0, 1.0)
    _check_range("repetition_penalty", spec.repetition_penalty, 0.0, 2.0, low_open=True)
    if spec.top_k is not None and spec.top_k < 0:
        raise InvalidArgument(
            f"sampling.top_k = {spec.top_k} must be ≥ 0",
            field="params.sampling.top_k",
            reason=Reason.SAMPLING_OUT_OF_RANGE,
        )
    if len(spec.stop) > limits.max_stop_strings:
        raise InvalidArgument(
            f"more than {limits.max_stop_strings} stop strings",
            field="params.stop",
            reason=Reason.TOO_MANY_STOPS,
        )
    if any(not s for s in spec.stop):
        raise InvalidArgument("stop strings must not be empty", field="params.stop", reason=Reason.EMPTY_STOP)
    if any(len(s) > limits.max_stop_chars for s in spec.stop):
        raise InvalidArgument(
            f"a stop string is longer than {limits.max_stop_chars} characters",
            field="params.stop",
            reason=Reason.STOP_TOO_LONG,
        )
    if spec.top_logprobs is not None and spec.top_logprobs > limits.max_top_logprobs:
        raise InvalidArgument(
            f"top_logprobs = {spec.top_logprobs}; at most {limits.max_top_logprobs}",
            field="params.top_logprobs",
            reason=Reason.TOP_LOGPROBS_OUT_OF_RANGE,
        )
    defaults = SamplingParams()
    sampling = SamplingParams(
        temperature=defaults.temperature if spec.temperature is None else spec.temperature,
        top_p=defaults.top_p if spec.top_p is None else spec.top_p,
        top_k=defaults.top_k if spec.top_k is None else spec.top_k,
        min_p=defaults.min_p if spec.min_p is None else spec.min_p,
        repetition_penalty=defaults.repetition_penalty if spec.repetition_penalty is None else spec.repetition_penalty,
        seed=spec.seed,
    )
    if spec.constraint is not None:
        _check_constraint(spec.constraint, limits)
    capabilities = route.model.capabilities
    if capabilities is not None:  # what the model cannot honour is refused here, before admission (engines check too)
        refusal = capabilities.refusal(sampling, spec.top_logprobs, spec.constraint)
        if refusal is not None:
            raise refusal
    request = GenerationRequest(
        request_id=request_id,
        model=route.model.name,
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=sampling,
        stop=spec.stop,
        top_logprobs=spec.top_logprobs,
        constraint=spec.constraint,
        cache_scope=cache_scope,
        trace=trace,
        priority=spec.priority,
    )
    return route, request


MIN_SAMPLE_RATE_HERTZ = 4_000
MAX_SAMPLE_RATE_HERTZ = 192_000
"""The output rates a synthesis may ask for (LINEAR16, MULAW, ALAW); the voice's audio is resampled to them."""
G711_RATE_HERTZ = 8_000
"""μ-law and A-law default to telephony's 8 kHz."""


def validate_synthesize(
    request_id: str, spec: SynthesizeSpec, text: AsyncIterator[str], limits: LimitsConfig, router: Router
) -> tuple[SpeechRoute, SynthesisRequest, AudioOutput]:
    """Resolve the voice and check every field; the text itself arrives later through `text`.

    Sizes and characters are checked first: a request is refused for its size before anything is looked up. A
    client's own text must hold something to speak (a streaming input is checked as it ends); a generation's output
    (`text_from_request_id`) may hold nothing, and its synthesis then finishes with no audio: the client did not
    write it.
    """
    _check_name(spec.voice, "params.voice", limits)
    if len(spec.text) > limits.max_synthesis_chars:
        raise InvalidArgument(
            f"the text has {len(spec.text)} characters; the limit is {limits.max_synthesis_chars}",
            field="params.text",
            reason=Reason.TEXT_TOO_LARGE,
        )
    _check_no_nul(spec.text, "params.text")
    check_id_length(spec.text_from_request_id, limits, "text_from_request_id")
    route = router.resolve(spec.voice, ModelKind.SPEECH_SYNTHESIS)
    if spec.unknown_encoding is not None:
        raise InvalidArgument(
            f"audio encoding {spec.unknown_encoding} is not supported; use one of "
            + ", ".join(f"AUDIO_ENCODING_{encoding.name}" for encoding in AudioEncoding),
            field="params.encoding",
            reason=Reason.UNSUPPORTED_ENCODING,
        )
    if spec.word_timings and not route.model.word_timings:
        raise InvalidArgument(
            f"voice {route.model.name!r} gives no word timings (ListModels says which voices do)",
            field="params.word_timings",
            reason=Reason.FIELD_UNSUPPORTED,
        )
    chunk_s = limits.default_chunk_ms / 1000 if spec.max_chunk_seconds is None else spec.max_chunk_seconds
    if not 0.01 <= chunk_s <= 2.0:
        raise InvalidArgument(
            f"max_chunk_duration {chunk_s:g}s is outside [0.01s, 2s]",
            field="params.max_chunk_duration",
            reason=Reason.CHUNK_DURATION_OUT_OF_RANGE,
        )
    if spec.text_from_request_id:
        if spec.text or spec.streaming_input:
            raise InvalidArgument(
                "text_from_request_id excludes params.text and streaming_input",
                field="text_from_request_id",
                reason=Reason.CONFLICTING_TEXT_SOURCES,
            )
    elif spec.streaming_input:
        text = _something_to_speak(text)
    elif not spec.text.strip():
        raise InvalidArgument("the text must not be empty", field="params.text", reason=Reason.EMPTY_TEXT)
    encoding = spec.encoding or AudioEncoding.LINEAR16
    output = AudioOutput(
        encoding,
        _output_rate(spec.sample_rate_hertz, encoding, route.model.sample_rate_hertz),
        chunk_s,
        spec.word_timings,
    )
    request = SynthesisRequest(
        request_id=request_id,
        voice=route.model.name,
        text=text,
        max_chunk_samples=max(1, round(route.model.sample_rate_hertz * chunk_s)),
        priority=spec.priority,
    )
    return route, request, output


def _output_rate(asked: int, encoding: AudioEncoding, native: int) -> int:
    """The rate of the request's audio: the one asked for, else the encoding's usual one (LINEAR16: the voice's)."""
    if encoding is AudioEncoding.OGG_OPUS:
        if asked not in (0, OPUS_RATE):
            raise InvalidArgument(
                f"Ogg Opus is produced at {OPUS_RATE} Hz, not {asked} Hz; leave sample_rate_hertz at 0",
                field="params.sample_rate_hertz",
                reason=Reason.UNSUPPORTED_SAMPLE_RATE,
                metadata={"supported_sample_rate_hertz": str(OPUS_RATE)},
            )
        return OPUS_RATE
    if asked == 0:
        return G711_RATE_HERTZ if encoding in (AudioEncoding.MULAW, AudioEncoding.ALAW) else native
    if not MIN_SAMPLE_RATE_HERTZ <= asked <= MAX_SAMPLE_RATE_HERTZ:
        raise InvalidArgument(
            f"sample_rate_hertz {asked} is outside [{MIN_SAMPLE_RATE_HERTZ}, {MAX_SAMPLE_RATE_HERTZ}]",
            field="params.sample_rate_hertz",
            reason=Reason.UNSUPPORTED_SAMPLE_RATE,
        )
    return asked


async def _something_to_speak(pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    """A client's streaming input, passed through; at its end, INVALID_ARGUMENT if it held only whitespace."""
    speakable = False
    async for piece in pieces:
        speakable = speakable or bool(piece.strip())
        yield piece
    if not speakable:
        raise InvalidArgument("the text to synthesize is empty", field="text", reason=Reason.EMPTY_TEXT)
