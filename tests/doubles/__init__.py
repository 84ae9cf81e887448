"""Test engines: each labelled, each driving one behaviour the real engines cannot be made to show on demand."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncGenerator
from typing import Literal

from rillet.server.config import SyntheticConfig
from rillet.server.engine.base import SpeechEvent, TextEvent
from rillet.server.engine.lifecycle import EngineLifecycle, State
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.engine.words import tokens
from rillet.server.errors import EngineDead
from rillet.server.types import (
    AudioChunk,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    SynthesisRequest,
    TokenDelta,
    Usage,
    WordTiming,
)


class FloodEngine(SyntheticEngine):
    """A TEST engine that emits 16 KiB deltas as fast as its stream is pulled, until the stream is closed."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        super().__init__(config or SyntheticConfig())
        self.emitted = 0  # deltas pulled by the server, across all streams

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        self._active += 1
        try:
            while True:
                self.emitted += 1
                yield TokenDelta("x" * 16384, (1,))
                await asyncio.sleep(0)
        finally:
            self._active -= 1


class EchoSpeechEngine(EngineLifecycle):
    """A TEST speech engine: silence for each text piece as it arrives (one sample per character), in chunks.

    Its word timings are exact by construction: a word's samples are its characters' positions in the text.
    """

    SAMPLE_RATE = 16_000

    def __init__(
        self,
        slots: int = 4,
        *,
        name: str = "echo-speech",
        voice: str = "echo-voice",
        about: str = "silence, one sample per character",
        word_timings: bool = True,
    ) -> None:
        model = ModelInfo(
            name=voice,
            kind=ModelKind.SPEECH_SYNTHESIS,
            engine=name,
            description=f"TEST ENGINE: {about}",
            is_test_engine=True,
            sample_rate_hertz=self.SAMPLE_RATE,
            word_timings=word_timings,
        )
        super().__init__(name, (model,), slots, state=State.SERVING)

    @property
    def serves(self) -> Literal[ModelKind.SPEECH_SYNTHESIS]:
        return ModelKind.SPEECH_SYNTHESIS

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def stream(self, request: SynthesisRequest) -> AsyncGenerator[SpeechEvent, None]:
        return self._speak(request)

    async def _speak(self, request: SynthesisRequest) -> AsyncGenerator[SpeechEvent, None]:
        self._active += 1
        try:
            offset = chars = 0
            async for text in request.text:
                # Whitespace before the first word is not spoken (so text with nothing to speak makes no audio); from
                # there on, sample = character. The piece's text rides on its first chunk, each word on the chunk
                # it starts in; no chunk is longer than the request allows. A word split across pieces counts as two.
                piece = text if offset else text.lstrip()
                chars += len(text) - len(piece)
                words = [
                    WordTiming(t.text, chars + t.start, chars + t.end, offset + t.start, offset + t.end)
                    for t in tokens(piece)
                ]
                chars += len(piece)
                for start in range(0, len(piece), request.max_chunk_samples):
                    samples = min(request.max_chunk_samples, len(piece) - start)
                    carried = tuple(w for w in words if offset <= w.start_sample < offset + samples)
                    yield AudioChunk(b"\0\0" * samples, self.SAMPLE_RATE, 1, offset, "" if start else piece, carried)
                    offset += samples
            usage = Usage(input_characters=chars, output_audio_seconds=offset / self.SAMPLE_RATE)
            yield EngineFinished(FinishReason.STOP, usage)
        finally:
            self._active -= 1


class ToneSpeechEngine(EchoSpeechEngine):
    """A TEST speech engine: a 440 Hz tone, `seconds_per_char` of it per character, produced `speedup` times faster
    than it plays and in 100 ms chunks, so a synthesis streams for a while (a browser plays it as it arrives)."""

    CHUNK_SECONDS = 0.1

    def __init__(self, seconds_per_char: float = 0.02, speedup: float = 4.0) -> None:
        super().__init__(
            name="tone-speech",
            voice="tone-voice",
            about="a 440 Hz tone, its length from the text's",
            word_timings=False,
        )
        self._seconds_per_char = seconds_per_char
        self._speedup = speedup
        samples = int(self.SAMPLE_RATE * self.CHUNK_SECONDS)
        wave = (int(6000 * math.sin(2 * math.pi * 440 * i / self.SAMPLE_RATE)) for i in range(samples))
        self._chunk = struct.pack(f"<{samples}h", *wave)

    async def _speak(self, request: SynthesisRequest) -> AsyncGenerator[SpeechEvent, None]:
        self._active += 1
        try:
            offset = chars = 0
            owed = 0.0  # seconds of tone the text so far asks for, not yet produced
            async for piece in request.text:
                chars += len(piece)
                owed += len(piece) * self._seconds_per_char
                while owed >= self.CHUNK_SECONDS:
                    owed -= self.CHUNK_SECONDS
                    await asyncio.sleep(self.CHUNK_SECONDS / self._speedup)
                    yield AudioChunk(self._chunk, self.SAMPLE_RATE, 1, offset, piece)
                    offset += len(self._chunk) // 2
            usage = Usage(input_characters=chars, output_audio_seconds=offset / self.SAMPLE_RATE)
            yield EngineFinished(FinishReason.STOP, usage)
        finally:
            self._active -= 1


class DyingEngine(SyntheticEngine):
    """A TEST engine that dies (EngineDead, for every stream it runs) once a prompt says "die"."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        super().__init__(config or SyntheticConfig(tokens_per_second=50.0, first_output_delay_s=0.0))
        self.dead = False

    def healthy(self) -> bool:
        return not self.dead

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        async for event in super()._generate(request):
            if request.prompt == "die":
                self.dead = True
            if self.dead:
                raise EngineDead("the test engine died", reason="ENGINE_DEAD")
            yield event
