"""Frozen result types the SDK yields: token deltas, audio chunks, the terminal Finished, and model metadata."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FinishReason(enum.Enum):
    """Why a request ended without error."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


class Priority(enum.Enum):
    """A request's admission class: waiting interactive requests are admitted first, batch ones are never starved."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token id and its natural-log probability."""

    token_id: int
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Log-probabilities of one emitted token and its most likely alternatives."""

    token: TokenLogprob
    top: tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New generated text since the previous delta (never cumulative)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()


class AudioEncoding(enum.Enum):
    """How a synthesis's audio bytes are encoded (rillet.v1.AudioEncoding)."""

    LINEAR16 = "linear16"
    """Headerless 16-bit little-endian PCM: the voice's rate by default, any rate on request."""
    OGG_OPUS = "ogg_opus"
    """Ogg Opus at 48 kHz (browsers, WebRTC): the chunks' bytes in order are one stream, decodable as they arrive."""
    MULAW = "mulaw"
    """G.711 μ-law, 8 kHz by default (telephony)."""
    ALAW = "alaw"
    """G.711 A-law, 8 kHz by default (telephony)."""


@dataclass(frozen=True, slots=True)
class WordTiming:
    """A word of a synthesis, placed in the request's text and in its audio.

    [start_char, end_char) in the request's whole text (code points); [start_sample, end_sample) of its audio from
    the start of the request's audio, at its chunks' rate.
    """

    text: str
    start_char: int
    end_char: int
    start_sample: int
    end_sample: int


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Synthesized audio placed at `offset_samples` (per channel) from the start of the request's audio.

    `audio` is encoded as the request asked (PCM16 by default); `words` are the words whose audio starts in this
    chunk, when the request asked for word timings.
    """

    audio: bytes
    sample_rate_hertz: int
    channel_count: int
    offset_samples: int
    text: str = ""
    words: tuple[WordTiming, ...] = ()
    sample_count: int | None = None
    """Samples per channel this chunk carries (None from a server that does not say: PCM16, counted from bytes)."""

    @property
    def samples(self) -> int:
        """Number of samples per channel in this chunk."""
        if self.sample_count is not None:
            return self.sample_count
        return len(self.audio) // (2 * max(self.channel_count, 1))

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate_hertz if self.sample_rate_hertz else 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """What a request consumed and produced."""

    input_tokens: int
    output_tokens: int
    input_characters: int
    output_audio_s: float
    cached_input_tokens: int = 0
    """Of input_tokens, those the server's prefix cache supplied (not computed again)."""


@dataclass(frozen=True, slots=True)
class Timings:
    """Server-side timings in seconds; None where the server did not measure them."""

    queue_s: float
    prefill_s: float | None
    time_to_first_output_s: float | None
    total_s: float


@dataclass(frozen=True, slots=True)
class SpokenText:
    """What a listener heard of a synthesis cut short: request text[start_char:end_char], whole words.

    `end_char` is where an agent cuts its history (in the generation's text, for a synthesis of a generation).
    """

    text: str
    start_char: int
    end_char: int
    played_samples: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The terminal message of a request that ended without error."""

    reason: FinishReason
    usage: Usage
    timings: Timings
    stop_sequence: str = ""
    spoken: SpokenText | None = None
    """What the listener heard, for a request cut short by `SynthesizeStream.interrupt` (see SpokenText)."""


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A whole generation, collected from its deltas."""

    text: str
    token_ids: tuple[int, ...]
    finished: Finished


@dataclass(frozen=True, slots=True)
class SynthesizeResult:
    """A whole synthesis, collected from its chunks."""

    audio: bytes
    sample_rate_hertz: int
    channel_count: int
    finished: Finished


class ModelKind(enum.Enum):
    """What a model does."""

    TEXT_GENERATION = "text_generation"
    SPEECH_SYNTHESIS = "speech_synthesis"


@dataclass(frozen=True, slots=True)
class TextCapabilities:
    """What a text model honours (rillet.v1.TextCapabilities); a request asking for more fails INVALID_ARGUMENT."""

    sampling_fields: frozenset[str]
    reproducible_seed: bool
    logprobs: bool
    sampled_logprobs: bool
    constraint_kinds: frozenset[str] = frozenset()
    """Output constraints enforced, by their GenerateParams field names ("json_schema", "regex", "grammar", ...)."""


@dataclass(frozen=True, slots=True)
class Model:
    """A model or voice the server serves; `text_capabilities` is None for voices."""

    name: str
    kind: ModelKind
    engine: str
    is_default: bool
    is_test_engine: bool
    description: str
    context_length: int
    sample_rate_hertz: int
    supports_chat: bool
    max_tokens_limit: int
    text_capabilities: TextCapabilities | None = None
    word_timings: bool = False
    """Voices: whether it gives word timings (SynthesizeOptions.word_timings) and says what a barge-in heard."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat prompt."""

    role: str
    content: str
