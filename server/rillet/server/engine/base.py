"""The engine protocols: what every backend shares, the text and speech seams, and optional capabilities.

EngineBase is what every backend shares, TextEngine and SpeechEngine the two seams; an engine may add the optional
capabilities (Tokenizing, KvCacheReporting), which the server finds with isinstance, never hasattr.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Literal, Protocol, runtime_checkable

from rillet.server.types import (
    AudioChunk,
    ChatMessage,
    EngineFinished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    SynthesisRequest,
    TokenDelta,
)

__all__ = [
    "Engine",
    "EngineBase",
    "KvCacheReporting",
    "SpeechEngine",
    "SpeechEvent",
    "TextEngine",
    "TextEvent",
    "Tokenizing",
]

TextEvent = TokenDelta | EngineFinished
"""What a text engine's stream yields."""

SpeechEvent = AudioChunk | EngineFinished
"""What a speech engine's stream yields."""


class EngineBase(Protocol):
    """What every engine has, text or speech: identity, capacity, lifecycle and health.

    Contract (tests/contract/ is its executable form; a new engine is done when that suite passes on it):
    - `stream(request)` returns an async iterator that yields outputs (TokenDelta for text, AudioChunk for
      speech) and then exactly one EngineFinished, or raises a RilletError. Errors that depend on the request
      (prompt longer than the context, sampling values the engine cannot honour, an unknown voice, ...) are raised
      before the first output: from `stream` itself or from the first `anext`, with INVALID_ARGUMENT where the
      request is at fault. A stream never ends without EngineFinished unless it raised.
    - Cancellation has one path: closing the iterator (aclose, or cancelling the task awaiting it) aborts the
      request inside the engine and frees what it held; `active` then drops within one engine step.
    - The scheduler admits at most `slots` concurrent streams per engine; an engine need not queue beyond that.
    - Engine work never runs on the event loop.
    - `healthy()` turns False, and stays so, once the engine cannot serve any more (a crashed worker, a closed
      engine); streams it fails for that reason raise EngineDead. The server's health follows it.
    """

    @property
    def name(self) -> str:
        """Engine kind, e.g. "llamacpp" or "synthetic": its name in the registry."""
        ...

    @property
    def models(self) -> Sequence[ModelInfo]:
        """Models or voices served, all of the kind `serves`; the first one is the default of that kind."""
        ...

    @property
    def slots(self) -> int:
        """How many requests the engine runs at once."""
        ...

    @property
    def active(self) -> int:
        """Requests currently holding engine resources (a slot, KV cache, a worker)."""
        ...

    async def start(self) -> None:
        """Load and warm up; raises if the engine cannot serve."""
        ...

    async def aclose(self) -> None:
        """Abort everything and release all resources."""
        ...

    def healthy(self) -> bool:
        """False once the engine can no longer serve (EngineDead)."""
        ...


class TextEngine(EngineBase, Protocol):
    """An engine that generates text: GenerationRequest in, TokenDelta outputs and one EngineFinished out.

    Text specifics: text is never split inside a UTF-8 character; a stop string ends the stream with
    STOP_SEQUENCE and no part of it (nor of a prefix held while it might match) is ever streamed; at most
    `max_tokens` tokens are generated; the token ids of all deltas together number `usage.output_tokens`.
    """

    @property
    def serves(self) -> Literal[ModelKind.TEXT_GENERATION]:
        """What the engine's models do; the router routes only generation requests here."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        """Run one generation; see EngineBase for the contract."""
        ...


class SpeechEngine(EngineBase, Protocol):
    """An engine that speaks: SynthesisRequest (its text a stream of pieces) in, AudioChunk outputs out.

    Speech specifics: chunks of PCM16 at the voice's rate are placed exactly by `offset_samples`, contiguous from 0,
    each at most `max_chunk_samples`; audio may start before the text has ended; `usage.output_audio_seconds` is the
    audio streamed (total samples / sample rate). Text with nothing to speak (none, or only whitespace) finishes
    normally with no audio: whether an empty text is the client's fault is decided above the engine. A voice whose
    ModelInfo says `word_timings` puts on each chunk the words whose audio starts in it, characters indexing the
    request's whole text. The client's rate and encoding are applied above the engine (audio/output.py).
    """

    @property
    def serves(self) -> Literal[ModelKind.SPEECH_SYNTHESIS]:
        """What the engine's models do; the router routes only synthesis requests here."""
        ...

    def stream(self, request: SynthesisRequest) -> AsyncGenerator[SpeechEvent, None]:
        """Run one synthesis; see EngineBase for the contract."""
        ...


Engine = TextEngine | SpeechEngine
"""Any engine; `engine.serves` tells which (mypy narrows on it)."""


@runtime_checkable
class Tokenizing(Protocol):
    """A text engine that tokenizes for clients: ControlService Tokenize, Detokenize and CountTokens.

    Contract: `tokenize` returns the ids a GenerationRequest with the same prompt would be read as (a chat prompt
    rendered by the model's chat template first), so CountTokens agrees with `usage.input_tokens`; it refuses what
    generation would refuse of the prompt itself (InvalidArgument with the same reason, e.g. CHAT_TEMPLATE_MISSING),
    before any limit of max_tokens. `detokenize` returns the text the model would print for the ids, and refuses an
    id outside the vocabulary (InvalidArgument, TOKEN_ID_OUT_OF_RANGE). Both may block: the server calls them on a
    worker thread, a bounded number at a time, so they must be safe beside the engine's own work.
    """

    def tokenize(self, model: str, prompt: str | tuple[ChatMessage, ...]) -> list[int]:
        """The prompt's token ids, as generation reads them."""
        ...

    def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        """The text of `token_ids`."""
        ...


@runtime_checkable
class KvCacheReporting(Protocol):
    """An engine with a KV cache that reports how full it is (the load reports, ORCA and the router gauges)."""

    def kv_cache_utilization(self) -> float:
        """The share of the KV cache in use now, in [0, 1]. Cheap, and callable from the event loop at any time."""
        ...
