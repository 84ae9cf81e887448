"""The speech output stage: every encoding decoded by an independent decoder, chunk placement, words and labels.

Independent decoders: FFmpeg's own Opus decoder (not libopus, which encodes) through PyAV, and the G.711 tables of
the standard library's audioop (audioop-lts from Python 3.13). The reference is the engine's PCM resampled once,
whole, by soxr.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import AsyncGenerator, Callable, Sequence

import av
import numpy as np
import numpy.typing as npt
import pytest
import soxr  # type: ignore[import-untyped]

from rillet.server.audio import OPUS_FRAME_SAMPLES, OPUS_RATE
from rillet.server.audio.codecs import G711Encoder
from rillet.server.audio.output import chunk_samples, speak
from rillet.server.audio.transcript import Transcript
from rillet.server.engine.base import SpeechEvent
from rillet.server.types import (
    AudioChunk,
    AudioEncoding,
    AudioOutput,
    EngineFinished,
    FinishReason,
    Usage,
    WordTiming,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RATE = 16_000
Pcm = npt.NDArray[np.int16]


def voiced(seconds: float, rate: int = RATE) -> Pcm:
    """A deterministic speech-like signal: a 150 Hz buzz with harmonics, its loudness moving like syllables."""
    t = np.arange(round(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t)
    return np.asarray(buzz * envelope * 4000, dtype=np.int16)


async def engine_stream(
    pcm: Pcm, chunk: int, *, rate: int = RATE, words: Sequence[WordTiming] = (), labels: dict[int, str] | None = None
) -> AsyncGenerator[SpeechEvent, None]:
    """What an engine would yield: `pcm` in chunks, each word on the chunk it starts in, then EngineFinished."""
    labels = labels or {}
    for start in range(0, len(pcm), chunk):
        piece = pcm[start : start + chunk]
        carried = tuple(w for w in words if start <= w.start_sample < start + len(piece))
        yield AudioChunk(piece.tobytes(), rate, 1, start, labels.get(start, ""), carried)
    yield EngineFinished(FinishReason.STOP, Usage(output_audio_seconds=len(pcm) / rate))


async def run(
    pcm: Pcm,
    output: AudioOutput,
    *,
    chunk: int = 2560,
    words: Sequence[WordTiming] = (),
    labels: dict[int, str] | None = None,
) -> tuple[list[AudioChunk], EngineFinished, Transcript]:
    transcript = Transcript()
    chunks: list[AudioChunk] = []
    finished: EngineFinished | None = None
    async for event in speak(engine_stream(pcm, chunk, words=words, labels=labels), output, transcript):
        if isinstance(event, EngineFinished):
            finished = event
        else:
            chunks.append(event)
    assert finished is not None
    return chunks, finished, transcript


def assert_placed(chunks: list[AudioChunk], output: AudioOutput) -> int:
    offset = 0
    limit = chunk_samples(output)
    for index, chunk in enumerate(chunks):
        assert chunk.offset_samples == offset
        assert chunk.sample_rate_hertz == output.sample_rate_hertz
        last = index == len(chunks) - 1
        assert 0 < chunk.samples <= limit + (OPUS_FRAME_SAMPLES if last else 0)
        offset += chunk.samples
    return offset


def snr_db(reference: npt.NDArray[np.float64], decoded: npt.NDArray[np.float64]) -> float:
    n = min(len(reference), len(decoded))
    noise = np.sum((reference[:n] - decoded[:n]) ** 2)
    return float(10 * math.log10(np.sum(reference[:n] ** 2) / noise))


def g711_decoder(encoding: AudioEncoding) -> Callable[[bytes, int], bytes]:
    """The standard library's G.711 table decoder (ulaw2lin or alaw2lin)."""
    return audioop.ulaw2lin if encoding is AudioEncoding.MULAW else audioop.alaw2lin


def decode_opus(data: bytes) -> npt.NDArray[np.float64]:
    """Decoded with FFmpeg's native Opus decoder, at 16-bit scale."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"  # FFmpeg's own decoder, not libopus
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    return np.concatenate(frames).astype(np.float64) * 32768 if frames else np.zeros(0)


async def test_ogg_opus_decodes_chunk_by_chunk_as_it_arrives_and_matches_the_pcm() -> None:
    pcm = voiced(2.0)
    output = AudioOutput(AudioEncoding.OGG_OPUS, OPUS_RATE, 0.16)
    chunks, finished, _ = await run(pcm, output)
    total = assert_placed(chunks, output)
    assert total == round(len(pcm) * OPUS_RATE / RATE)
    assert finished.usage.output_audio_seconds == pytest.approx(total / OPUS_RATE)
    assert chunks[0].audio.startswith(b"OggS")
    reference = soxr.resample(pcm, RATE, OPUS_RATE).astype(np.float64)
    received = b""
    for chunk in chunks:
        received += chunk.audio
        decoded = decode_opus(received)  # what a listener can play so far, before the stream has ended
        expected = chunk.offset_samples + chunk.samples
        # FFmpeg's Ogg demuxer holds the last packet of a stream that has not ended (it looks for the next page).
        assert expected - OPUS_FRAME_SAMPLES <= len(decoded) <= expected
        if len(decoded) > OPUS_RATE // 10:
            assert snr_db(reference[: len(decoded)], decoded) > 15
    assert len(decode_opus(received)) == total  # the whole stream: exactly the input, pre-skip dropped
    assert snr_db(reference, decode_opus(received)) > 20  # measured 28 dB on this signal (and 19 dB on piper speech)


@pytest.mark.parametrize(
    ("encoding", "decode"), [(AudioEncoding.MULAW, audioop.ulaw2lin), (AudioEncoding.ALAW, audioop.alaw2lin)]
)
def test_g711_bytes_decode_to_a_level_next_to_every_input_sample(encoding: AudioEncoding, decode: object) -> None:
    """Every 16-bit value, encoded by the server's encoder, decodes (by the G.711 table) to one of the two levels
    around it: the codec's exact bound. FFmpeg rounds some values to the other neighbour than audioop would."""
    decode = g711_decoder(encoding)
    levels = np.unique(np.frombuffer(decode(bytes(range(256)), 2), dtype=np.int16)).astype(np.int64)
    assert len(levels) in (255, 256)  # μ-law has two zeros
    values = np.arange(-32768, 32768, dtype=np.int64)
    encoded = G711Encoder(encoding, 8000).encode(values.astype(np.int16))
    assert encoded.samples == len(values) == len(encoded.audio)
    decoded = np.frombuffer(decode(encoded.audio, 2), dtype=np.int16).astype(np.int64)
    above = np.searchsorted(levels, values, side="left").clip(0, len(levels) - 1)
    below = (np.searchsorted(levels, values, side="right") - 1).clip(0, len(levels) - 1)
    assert np.all((decoded == levels[above]) | (decoded == levels[below]))


@pytest.mark.parametrize("encoding", [AudioEncoding.MULAW, AudioEncoding.ALAW])
async def test_telephony_audio_is_8khz_one_byte_a_sample_and_matches_the_pcm(encoding: AudioEncoding) -> None:
    pcm = voiced(1.5)
    output = AudioOutput(encoding, 8000, 0.1)
    chunks, _, _ = await run(pcm, output)
    total = assert_placed(chunks, output)
    assert total == len(pcm) // 2
    assert all(len(chunk.audio) == chunk.samples for chunk in chunks)
    decoded = np.frombuffer(g711_decoder(encoding)(b"".join(c.audio for c in chunks), 2), dtype=np.int16)
    reference = soxr.resample(pcm, RATE, 8000).astype(np.float64)
    assert snr_db(reference, decoded.astype(np.float64)) > 30  # G.711's companding: about 38 dB on speech-like levels


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
async def test_pcm16_at_another_rate_is_the_resampled_pcm(rate: int) -> None:
    pcm = voiced(1.0)
    output = AudioOutput(AudioEncoding.LINEAR16, rate, 0.05)
    chunks, _, _ = await run(pcm, output, chunk=800)
    total = assert_placed(chunks, output)
    decoded = np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2").astype(np.float64)
    assert total == len(decoded) == round(len(pcm) * rate / RATE)
    reference = soxr.resample(pcm, RATE, rate).astype(np.float64)  # one-shot, where the server streams
    assert np.max(np.abs(decoded - reference)) <= 2


async def test_pcm16_at_the_voice_rate_passes_through_untouched() -> None:
    pcm = voiced(0.5)
    output = AudioOutput(AudioEncoding.LINEAR16, RATE, 0.16)
    chunks, _, transcript = await run(pcm, output)
    assert b"".join(c.audio for c in chunks) == pcm.tobytes()
    assert transcript.sent_samples == len(pcm)


WORDS = (WordTiming("Hello", 0, 5, 1000, 5000), WordTiming("there.", 6, 12, 9000, 15000))


@pytest.mark.parametrize(
    "output",
    [
        AudioOutput(AudioEncoding.LINEAR16, RATE, 0.1, word_timings=True),
        AudioOutput(AudioEncoding.OGG_OPUS, OPUS_RATE, 0.1, word_timings=True),
        AudioOutput(AudioEncoding.MULAW, 8000, 0.1, word_timings=True),
    ],
    ids=["pcm", "opus", "mulaw"],
)
async def test_words_and_labels_ride_the_chunk_their_audio_starts_in_at_the_output_rate(output: AudioOutput) -> None:
    pcm = voiced(1.2)
    chunks, _, transcript = await run(pcm, output, words=WORDS, labels={0: "Hello there."})
    ratio = output.sample_rate_hertz / RATE
    words = [word for chunk in chunks for word in chunk.words]
    assert [(w.text, w.start_sample, w.end_sample) for w in words] == [
        (w.text, round(w.start_sample * ratio), round(w.end_sample * ratio)) for w in WORDS
    ]
    for chunk in chunks:
        assert all(chunk.offset_samples <= w.start_sample < chunk.offset_samples + chunk.samples for w in chunk.words)
    assert [c.text for c in chunks if c.text] == ["Hello there."]
    assert transcript.sent_samples == sum(c.samples for c in chunks)


async def test_words_stay_off_the_wire_unless_asked_for_yet_the_transcript_keeps_them() -> None:
    pcm = voiced(1.2)
    chunks, _, transcript = await run(pcm, AudioOutput(AudioEncoding.LINEAR16, RATE, 0.1), words=WORDS)
    assert all(not chunk.words for chunk in chunks)
    assert transcript.heard(len(pcm)).end_char == 12


def test_the_chunk_bound_of_ogg_opus_is_whole_frames_at_least_two() -> None:
    assert chunk_samples(AudioOutput(AudioEncoding.OGG_OPUS, OPUS_RATE, 0.01)) == 2 * OPUS_FRAME_SAMPLES
    assert chunk_samples(AudioOutput(AudioEncoding.OGG_OPUS, OPUS_RATE, 0.15)) == 7 * OPUS_FRAME_SAMPLES
    assert chunk_samples(AudioOutput(AudioEncoding.MULAW, 8000, 0.15)) == 1200


async def test_nothing_to_speak_makes_no_stream_at_all() -> None:
    chunks, finished, transcript = await run(
        np.zeros(0, dtype=np.int16), AudioOutput(AudioEncoding.OGG_OPUS, OPUS_RATE, 0.1)
    )
    assert chunks == []
    assert finished.usage.output_audio_seconds == 0
    assert transcript.heard(10_000).text == ""
