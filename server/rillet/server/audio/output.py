"""A synthesis's audio as its client asked for it: any speech engine's PCM16 resampled, encoded and re-chunked."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from rillet.server.audio import OPUS_FRAME_SAMPLES
from rillet.server.audio.transcript import Transcript
from rillet.server.engine.base import SpeechEvent
from rillet.server.types import AudioChunk, AudioEncoding, AudioOutput, EngineFinished, WordTiming

if TYPE_CHECKING:  # numpy, soxr and PyAV come with the speech extra: imported where audio is converted
    from rillet.server.audio.codecs import Encoded, Encoder, Resampler, Samples

__all__ = ["chunk_samples", "speak"]


def chunk_samples(output: AudioOutput) -> int:
    """The most samples one chunk of `output` carries: its chunk length at its rate.

    Ogg Opus chunks hold whole 20 ms frames: the length is rounded down to whole frames, and is at least two (the
    last chunk also carries the encoder's look-ahead, at most a frame more).
    """
    samples = max(1, round(output.sample_rate_hertz * output.max_chunk_seconds))
    if output.encoding is AudioEncoding.OGG_OPUS:
        return max(2 * OPUS_FRAME_SAMPLES, samples // OPUS_FRAME_SAMPLES * OPUS_FRAME_SAMPLES)
    return samples


async def speak(
    events: AsyncGenerator[SpeechEvent, None], output: AudioOutput, transcript: Transcript
) -> AsyncGenerator[SpeechEvent, None]:
    """The engine's `events` as `output` asks: every chunk recorded in `transcript` as it is handed on.

    PCM16 at the engine's own rate passes through as it is. Anything else is converted on a worker thread (encoding
    is engine work: it never runs on the event loop), chunk by chunk, each engine chunk's audio handed on as soon as
    it is converted. Word timings stay on the chunks only when the request asked for them; the transcript always
    keeps them, for a barge-in to say what was heard. Closing this stream closes the engine's.
    """
    converter: _Converter | None = None
    try:
        async for event in events:
            if isinstance(event, EngineFinished):
                if converter is not None:
                    for chunk in await asyncio.to_thread(converter.finish):
                        yield _handed_on(chunk, output, transcript)
                    total = converter.total_samples
                    usage = dataclasses.replace(event.usage, output_audio_seconds=total / output.sample_rate_hertz)
                    event = dataclasses.replace(event, usage=usage)
                yield event
                return
            if event.sample_rate_hertz == output.sample_rate_hertz and output.encoding is AudioEncoding.LINEAR16:
                yield _handed_on(event, output, transcript)
                continue
            if converter is None:
                converter = _Converter(output, event.sample_rate_hertz)
            for chunk in await asyncio.to_thread(converter.convert, event):
                yield _handed_on(chunk, output, transcript)
    finally:
        await events.aclose()


def _handed_on(chunk: AudioChunk, output: AudioOutput, transcript: Transcript) -> AudioChunk:
    transcript.record(chunk.words, chunk.samples)
    if chunk.words and not output.word_timings:
        return dataclasses.replace(chunk, words=())
    return chunk


class _Converter:
    """One request's engine chunks (PCM16 at the voice's rate) into output chunks (its rate, encoding and length).

    Invariants: output offsets are contiguous from 0 at the output rate and each chunk carries at most
    `chunk_samples(output)`; positions move from the engine's rate to the output's by the rates' ratio, and a text
    label or a word rides on the first output chunk whose audio reaches its position (on the last one at the end);
    bytes that decode to no sample yet (the Ogg Opus headers) wait for the next chunk.
    """

    def __init__(self, output: AudioOutput, rate: int) -> None:
        from rillet.server.audio import codecs

        self._codecs = codecs
        self._output = output
        self._ratio = output.sample_rate_hertz / rate
        self._resampler: Resampler | None = (
            codecs.Resampler(rate, output.sample_rate_hertz) if rate != output.sample_rate_hertz else None
        )
        self._encoder: Encoder = codecs.encoder_for(output.encoding, output.sample_rate_hertz)
        self._limit = chunk_samples(output)
        self._opus = output.encoding is AudioEncoding.OGG_OPUS
        self._fed = 0  # samples given to the encoder
        self._labels: collections.deque[tuple[int, str]] = collections.deque()
        self._words: collections.deque[WordTiming] = collections.deque()
        self._held = b""
        self.total_samples = 0  # samples handed out: the next chunk's offset

    def convert(self, chunk: AudioChunk) -> list[AudioChunk]:
        if chunk.text:
            self._labels.append((self._scaled(chunk.offset_samples), chunk.text))
        self._words.extend(
            dataclasses.replace(
                word, start_sample=self._scaled(word.start_sample), end_sample=self._scaled(word.end_sample)
            )
            for word in chunk.words
        )
        samples = self._codecs.samples(chunk.audio)
        return self._encode(self._resampler.push(samples) if self._resampler is not None else samples)

    def finish(self) -> list[AudioChunk]:
        out = self._encode(self._resampler.flush()) if self._resampler is not None else []
        self._add(self._encoder.finish(), out, last=True)
        return out

    def _scaled(self, position: int) -> int:
        return round(position * self._ratio)

    def _encode(self, samples: Samples) -> list[AudioChunk]:
        out: list[AudioChunk] = []
        start = 0
        while start < len(samples):
            # An Opus encoder keeps what does not fill a frame: feed it what makes the chunk exactly `_limit`.
            room = self._limit - (self._fed % OPUS_FRAME_SAMPLES if self._opus else 0)
            piece = samples[start : start + room]
            start += len(piece)
            self._fed += len(piece)
            self._add(self._encoder.encode(piece), out, last=False)
        return out

    def _add(self, encoded: Encoded, out: list[AudioChunk], *, last: bool) -> None:
        self._held += encoded.audio
        if not encoded.samples and not (last and self._held):
            return
        offset, end = self.total_samples, self.total_samples + encoded.samples
        labels: list[str] = []
        while self._labels and (last or self._labels[0][0] < end):
            labels.append(self._labels.popleft()[1])
        words: list[WordTiming] = []
        while self._words and (last or self._words[0].start_sample < end):
            words.append(self._words.popleft())
        rate = self._output.sample_rate_hertz
        out.append(AudioChunk(self._held, rate, 1, offset, " ".join(labels), tuple(words), encoded.samples))
        self._held = b""
        self.total_samples = end
