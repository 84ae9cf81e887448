"""Domain types shared by every layer below the transport: requests, engine events and results."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from rillet.server.errors import InvalidArgument, RilletError
from rillet.server.reasons import Reason


class FinishReason(enum.Enum):
    """Why a request ended without error (mirrors rillet.v1.FinishReason)."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


class ModelKind(enum.Enum):
    """What a model does."""

    TEXT_GENERATION = "text_generation"
    SPEECH_SYNTHESIS = "speech_synthesis"


class Priority(enum.Enum):
    """A request's admission class (mirrors rillet.v1.Priority; unset is INTERACTIVE).

    The scheduler admits waiting interactive requests before batch ones, never starving batch (scheduler.Admission);
    engines see it on the request (an engine that preempts prefers preempting batch work).
    """

    INTERACTIVE = "interactive"
    BATCH = "batch"


class ConstraintKind(enum.Enum):
    """The kinds of output constraint (mirrors rillet.v1.ConstraintKind); the value is its GenerateParams field."""

    JSON_SCHEMA = "json_schema"
    REGEX = "regex"
    GRAMMAR = "grammar"
    CHOICE = "choice"
    JSON_OBJECT = "json_object"


@dataclass(frozen=True, slots=True)
class Constraint:
    """An output constraint: `text` is the schema, regex or Lark grammar; `choices` the strings of a CHOICE."""

    kind: ConstraintKind
    text: str = ""
    choices: tuple[str, ...] = ()


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
"""The fields of SamplingParams, by their proto names."""


@dataclass(frozen=True, slots=True)
class TextCapabilities:
    """What a text model honours beyond the prompt, max_tokens and stop strings (which every text engine keeps).

    Enforce or refuse: a request asking for anything not listed here fails with INVALID_ARGUMENT naming the field
    (`refusal`, checked at the edge by validation.py and again at the engine seam); ListModels publishes it per model.
    """

    sampling: frozenset[str] = frozenset(SAMPLING_FIELDS)
    """SamplingParams fields honoured. Any other may only keep its default (no-op) value: unset or equal to it."""
    reproducible_seed: bool = False
    """The same request with the same `sampling.seed`, run alone, yields the same tokens every time."""
    logprobs: bool = True
    """`top_logprobs` is honoured under greedy decoding (temperature 0)."""
    sampled_logprobs: bool = True
    """`top_logprobs` is honoured under sampling too: the sampled token's own log-probability is always known."""
    constraints: frozenset[ConstraintKind] = frozenset()
    """The output constraints the model enforces."""

    def refusal(
        self, sampling: SamplingParams, top_logprobs: int | None, constraint: Constraint | None = None
    ) -> InvalidArgument | None:
        """The error for the first thing asked of this model that it cannot honour; None when it honours all."""
        if constraint is not None and constraint.kind not in self.constraints:
            return InvalidArgument(
                f"this model does not enforce {constraint.kind.value} constraints (ListModels lists the kinds it does)",
                field=f"params.{constraint.kind.value}",
                reason=Reason.CONSTRAINT_UNSUPPORTED,
            )
        for name in SAMPLING_FIELDS:
            value = getattr(sampling, name)
            if name not in self.sampling and value != getattr(_NO_OP_SAMPLING, name):
                return InvalidArgument(
                    f"sampling.{name} = {value} is not honoured by this model; leave it unset "
                    "(ListModels lists what each model honours)",
                    field=f"params.sampling.{name}",
                    reason=Reason.FIELD_UNSUPPORTED,
                )
        if top_logprobs is not None:
            sampled = sampling.temperature >= GREEDY_BELOW_TEMPERATURE
            if not self.logprobs or (sampled and not self.sampled_logprobs):
                when = " with sampling (temperature > 0)" if self.logprobs else ""
                return InvalidArgument(
                    f"top_logprobs is not honoured by this model{when}; leave it unset "
                    "(ListModels lists what each model honours)",
                    field="params.top_logprobs",
                    reason=Reason.FIELD_UNSUPPORTED,
                )
        return None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model or voice an engine serves. `capabilities` is set for text models, None for voices."""

    name: str
    kind: ModelKind
    engine: str
    description: str = ""
    is_test_engine: bool = False
    context_length: int = 0
    sample_rate_hertz: int = 0
    supports_chat: bool = False
    max_tokens_limit: int = 0
    capabilities: TextCapabilities | None = None
    word_timings: bool = False
    """Voices: the engine aligns each word with its audio (AudioChunk.words), so `word_timings` requests and a
    barge-in's heard text (SpokenText) are served."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat prompt."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings, already validated and defaulted."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None


_NO_OP_SAMPLING = SamplingParams()
"""Each field's value when a request leaves it unset (temperature's is plain sampling; the others do nothing)."""

GREEDY_BELOW_TEMPERATURE = 0.01
"""Temperatures below this decode greedily (the proto's `temperature` comment promises it).

Why: at 1e-38 the logits divided by the temperature overflow float32 and the draw returns garbage (token 262143,
empty text); far above that, a runner-up whose logit trails by only 0.1 already has probability e^-10 at 0.01, so
sampling there is greedy in all but near-ties. 0.01 also keeps logits/temperature inside float16 for engines that
sample in half precision (vLLM clamps temperatures below 0.01 for the same reason)."""


Prompt = str | tuple[int, ...] | tuple[ChatMessage, ...]
"""Text, token ids, or chat messages. Never empty."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated text-generation request, as an engine receives it."""

    request_id: str
    model: str
    prompt: Prompt
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    constraint: Constraint | None = None
    cache_scope: str = ""
    """Cached prompt tokens are reused only between requests of the same scope: the tenant's own unless the
    operator groups tenants (SecurityConfig); "" without authentication. No KV, no cached-token count and no timing
    crosses scopes."""
    trace: TraceContext | None = None
    """The W3C trace context an engine's own spans join (trtllm passes it to TensorRT-LLM as `trace_headers`)."""
    priority: Priority = Priority.INTERACTIVE
    """Its admission class; an engine that preempts running work to make room prefers preempting BATCH requests."""


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    """One validated speech-synthesis request, as an engine receives it. Its text arrives as an async stream of pieces.

    The engine produces PCM16 at the voice's own rate, in chunks of at most `max_chunk_samples`; what the client
    asked of the audio (its rate, its encoding, word timings on the wire) is applied above the engine
    (audio/output.py), the same for every engine.
    """

    request_id: str
    voice: str
    text: AsyncIterator[str]
    max_chunk_samples: int
    priority: Priority = Priority.INTERACTIVE


class AudioEncoding(enum.Enum):
    """Encodings the server can produce (mirrors rillet.v1.AudioEncoding)."""

    LINEAR16 = "linear16"
    OGG_OPUS = "ogg_opus"
    MULAW = "mulaw"
    ALAW = "alaw"


@dataclass(frozen=True, slots=True)
class AudioOutput:
    """What a synthesis request asked of its audio: encoding, rate, chunk length and word timings on the wire."""

    encoding: AudioEncoding
    sample_rate_hertz: int
    max_chunk_seconds: float
    word_timings: bool = False


EngineRequest = GenerationRequest | SynthesisRequest


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token id and its log-probability."""

    token_id: int
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Log-probabilities for one emitted token and its top alternatives."""

    token: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New generated output since the previous delta. Never cumulative."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprobs, ...] = ()

    @staticmethod
    def join(deltas: Sequence[TokenDelta]) -> TokenDelta:
        """One delta for several consecutive ones, built once (merging pairwise as they arrive copies O(n²) bytes)."""
        if len(deltas) == 1:
            return deltas[0]
        return TokenDelta(
            "".join(d.text for d in deltas),
            tuple(i for d in deltas for i in d.token_ids),
            tuple(lp for d in deltas for lp in d.logprobs),
        )


@dataclass(frozen=True, slots=True)
class WordTiming:
    """One word of a synthesis: where it is in the request's text and in the request's audio.

    Characters are Unicode code points of the request's whole text (all its pieces, in order), [start_char,
    end_char); samples count from the start of the request's audio at its chunks' rate, [start_sample, end_sample).
    """

    text: str
    start_char: int
    end_char: int
    start_sample: int
    end_sample: int


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of synthesized audio, placed exactly by its sample offset.

    An engine yields PCM16; above it (audio/output.py) `audio` may be encoded, and then `sample_count` says how many
    samples per channel it carries (PCM16's are counted from its bytes). `words` are the words whose audio starts in
    this chunk.
    """

    audio: bytes
    sample_rate_hertz: int
    channel_count: int
    offset_samples: int
    text: str = ""
    words: tuple[WordTiming, ...] = ()
    sample_count: int | None = None

    @property
    def samples(self) -> int:
        if self.sample_count is not None:
            return self.sample_count
        return len(self.audio) // (2 * self.channel_count)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a request consumed and produced."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_characters: int = 0
    output_audio_seconds: float = 0.0
    cached_input_tokens: int = 0  # of input_tokens, those whose KV came from a cached prefix (not computed again)


@dataclass(frozen=True, slots=True)
class Timings:
    """Server-side timings of one request, in seconds."""

    queue: float
    prefill: float | None
    time_to_first_output: float | None
    total: float


@dataclass(frozen=True, slots=True)
class EngineFinished:
    """The terminal event of an engine stream."""

    reason: FinishReason
    usage: Usage
    stop_sequence: str = ""
    prefill_seconds: float | None = None
    """Prefill alone: from the engine starting work on the request (after `engine_queue_seconds`) to its first
    output, the prompt's forward passes. None where the engine cannot measure it apart from its own queueing, or has
    no prefill (it sets `first_output_seconds` instead)."""
    engine_queue_seconds: float = 0.0
    """From `stream` to the engine starting work on the request: its wait inside the engine (for a slot, KV room)
    after the scheduler admitted it. 0 where the engine does not queue, or cannot tell (see `first_output_seconds`)."""
    first_output_seconds: float | None = None
    """From `stream` to the first output, whatever the engine did meanwhile (its own queueing included): set by an
    engine that cannot split it into `engine_queue_seconds` and `prefill_seconds`, e.g. TensorRT-LLM, which queues and
    prefills inside its executor, or that has no prefill: piper's time to first audio. Timings.prefill reports it
    when `prefill_seconds` is None."""


EngineEvent = TokenDelta | AudioChunk | EngineFinished
"""What an engine stream yields: outputs, then exactly one EngineFinished (or it raises)."""


@dataclass(frozen=True, slots=True)
class SpokenText:
    """What a listener heard of a request's text when it was cut short: whole words, from the text's start.

    `text` is the request's text[start_char:end_char] (code points), through the last word whose audio ended within
    the `played_samples` the client reported (clamped to the audio it was sent). Empty when no word was heard.
    """

    text: str
    start_char: int
    end_char: int
    played_samples: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The terminal result of a request, as the session reports it."""

    reason: FinishReason
    usage: Usage
    timings: Timings
    stop_sequence: str = ""
    spoken: SpokenText | None = None


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context carried by one request."""

    traceparent: str
    tracestate: str = ""


@dataclass(frozen=True, slots=True)
class GenerateSpec:
    """A generation request as the client sent it: unset fields are None, nothing validated yet."""

    model: str = ""
    prompt: Prompt | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    constraint: Constraint | None = None
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True, slots=True)
class SynthesizeSpec:
    """A synthesis request as the client sent it, nothing validated yet. `encoding` None is the default."""

    voice: str = ""
    text: str = ""
    sample_rate_hertz: int = 0
    encoding: AudioEncoding | None = None
    unknown_encoding: int | None = None
    max_chunk_seconds: float | None = None
    streaming_input: bool = False
    text_from_request_id: str = ""
    word_timings: bool = False
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True, slots=True)
class Start:
    """Session command: start a request."""

    request_id: str
    spec: GenerateSpec | SynthesizeSpec
    trace: TraceContext | None = None
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class AppendText:
    """Session command: more input text for a streaming-input synthesize request."""

    request_id: str
    text: str


@dataclass(frozen=True, slots=True)
class EndInput:
    """Session command: the input of a streaming-input synthesize request is complete."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Session command: cancel a request. `played_samples`: how much of a synthesis's audio the client played."""

    request_id: str
    played_samples: int | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """Session command that could not be understood (e.g. no kind set); answered with `Rejected`."""

    request_id: str
    error: RilletError


Command = Start | AppendText | EndInput | Cancel | Malformed
"""One client message on a session call, as the session applies it (the transport makes one of each message)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Terminal output: the request failed with `error`."""

    error: RilletError

    def __post_init__(self) -> None:
        _detach(self.error)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Non-terminal output: a client message about this request id could not be applied.

    `message_index`: which of the call's client messages it answers, counting from 0 in the order they arrived.
    """

    error: RilletError
    message_index: int

    def __post_init__(self) -> None:
        _detach(self.error)


def _detach(error: BaseException) -> None:
    """Drop the traceback of an error that becomes an output.

    An output waits for a client that may read slowly or never; a traceback would keep the raising frames alive
    with it, and their locals (a client's 64 KiB request id, a whole prompt) past every byte bound the session keeps.
    """
    error.__traceback__ = None


@dataclass(frozen=True, slots=True)
class Output:
    """One message of a session's output stream. `seq` is contiguous per request (0 for Rejected)."""

    request_id: str
    seq: int
    payload: TokenDelta | AudioChunk | Finished | Failed | Rejected
