"""Resampling and encoding of a PCM16 mono stream, by maintained libraries only: soxr, and libopus and G.711 via PyAV.

Each class keeps the state of one request's stream and is used by one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]

from rillet.server.audio import OPUS_FRAME_MS, OPUS_RATE
from rillet.server.types import AudioEncoding

__all__ = [
    "Encoded",
    "Encoder",
    "G711Encoder",
    "OggOpusEncoder",
    "Pcm16Encoder",
    "Resampler",
    "Samples",
    "encoder_for",
    "samples",
]

Samples = npt.NDArray[np.int16]

OPUS_BITRATE = 32_000
"""Opus bits per second: WebRTC's usual rate for a voice (the Ogg pages add about 11 kbit/s of headers)."""
OGG_PAGE_US = OPUS_FRAME_MS * 1000
"""The Ogg muxer's page duration. Its default (1 s) holds a second of packets before writing any: one page per
packet instead, so the bytes of every packet are out as soon as it is encoded and each chunk decodes as it arrives."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """Bytes of one stream's encoded audio, and how many samples (per channel) of decoded audio they add."""

    audio: bytes
    samples: int


class Encoder(Protocol):
    """Encodes one stream of PCM16 mono at its rate; what it holds back comes out at `finish`."""

    def encode(self, samples: Samples) -> Encoded:
        """Encode more samples; returns what is ready (possibly nothing)."""
        ...

    def finish(self) -> Encoded:
        """The end of the stream: everything held back."""
        ...


class Pcm16Encoder:
    """Headerless signed 16-bit little-endian PCM: the samples as they are."""

    def encode(self, samples: Samples) -> Encoded:
        return Encoded(samples.astype("<i2", copy=False).tobytes(), len(samples))

    def finish(self) -> Encoded:
        return Encoded(b"", 0)


class G711Encoder:
    """G.711 μ-law or A-law (ITU-T G.711), one byte per sample, by FFmpeg's pcm_mulaw / pcm_alaw encoders."""

    def __init__(self, encoding: AudioEncoding, rate: int) -> None:
        codec = {AudioEncoding.MULAW: "pcm_mulaw", AudioEncoding.ALAW: "pcm_alaw"}[encoding]
        self._context = av.CodecContext.create(codec, "w")
        self._context.sample_rate = rate  # type: ignore[attr-defined]
        self._context.layout = "mono"  # type: ignore[attr-defined]
        self._context.format = "s16"  # type: ignore[attr-defined]
        self._rate = rate

    def encode(self, samples: Samples) -> Encoded:
        if not len(samples):
            return Encoded(b"", 0)
        packets = self._context.encode(_frame(samples, self._rate))  # type: ignore[attr-defined]
        return Encoded(b"".join(bytes(packet) for packet in packets), len(samples))

    def finish(self) -> Encoded:
        return Encoded(b"", 0)


class _Sink:
    """Where the Ogg muxer writes: the bytes since the last `take`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class OggOpusEncoder:
    """Ogg Opus (RFC 7845), mono at 48 kHz: libopus through PyAV, one Ogg page per 20 ms packet.

    Decoded samples: a decoder drops the stream's first `pre_skip` samples (the encoder's look-ahead) and trims the
    last packet to the stream's length, so the decoded audio lines up with the input sample for sample. The samples
    each `Encoded` adds are counted on that decoded timeline: after k packets, k * 960 - pre_skip (the first bytes,
    the OpusHead and OpusTags headers, add none); `finish` adds the rest, so the counts sum to the input's length.
    """

    def __init__(self) -> None:
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format="ogg", container_options={"page_duration": str(OGG_PAGE_US)})
        self._stream = self._container.add_stream("libopus", rate=OPUS_RATE, layout="mono")
        # "audio" (CELT and hybrid modes) keeps the voice's waveform: 19-26 dB SNR on piper's speech at 32-64 kbit/s,
        # where "voip" (SILK, built for a microphone's speech) kept 11-12 dB.
        self._stream.codec_context.options = {"frame_duration": str(OPUS_FRAME_MS), "application": "audio"}
        self._stream.codec_context.bit_rate = OPUS_BITRATE
        self._pts = 0
        self._packets = 0
        self._pre_skip: int | None = None  # read from the OpusHead header once it is written
        self._counted = 0  # decoded samples accounted for so far

    def encode(self, samples: Samples) -> Encoded:
        if not len(samples):
            return Encoded(b"", 0)
        frame = _frame(samples, OPUS_RATE)
        frame.pts = self._pts
        self._pts += len(samples)
        self._mux(self._stream.encode(frame))
        data = self._sink.take()
        if self._pre_skip is None and data:
            self._pre_skip = _pre_skip(data)
        frame_size = int(self._stream.codec_context.frame_size)
        decoded = max(0, self._packets * frame_size - (self._pre_skip or 0))
        return self._count(data, min(decoded, self._pts))

    def finish(self) -> Encoded:
        self._mux(self._stream.encode(None))
        self._container.close()
        return self._count(self._sink.take(), self._pts)

    def _mux(self, packets: list[av.Packet[Any]]) -> None:
        for packet in packets:
            self._container.mux(packet)
            self._packets += 1

    def _count(self, data: bytes, decoded: int) -> Encoded:
        added, self._counted = decoded - self._counted, decoded
        return Encoded(data, added)


def _pre_skip(stream_start: bytes) -> int:
    """OpusHead's pre-skip (RFC 7845 §5.1: a little-endian uint16 10 bytes into the header's packet)."""
    head = stream_start.find(b"OpusHead")
    if head < 0 or len(stream_start) < head + 12:
        raise ValueError("the Ogg Opus stream does not start with its OpusHead header")
    return int.from_bytes(stream_start[head + 10 : head + 12], "little")


def _frame(samples: Samples, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    return frame


class Resampler:
    """A stream of PCM16 from one rate to another (libsoxr, "HQ"), the output aligned with the input sample for sample.

    soxr holds back its filter's delay: early calls may return less than their share (or nothing), `flush` the rest,
    so the output's total length is the input's length times the ratio.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16", quality="HQ")

    def push(self, samples: Samples) -> Samples:
        return np.asarray(self._stream.resample_chunk(samples), dtype=np.int16)

    def flush(self) -> Samples:
        return np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True), dtype=np.int16)


def samples(pcm: bytes) -> Samples:
    """PCM16 little-endian bytes as samples (a view, no copy)."""
    return np.frombuffer(pcm, dtype="<i2")


def encoder_for(encoding: AudioEncoding, rate: int) -> Encoder:
    """A new encoder of one stream at `rate` (Ogg Opus: 48 kHz, as validation requires)."""
    if encoding is AudioEncoding.LINEAR16:
        return Pcm16Encoder()
    if encoding is AudioEncoding.OGG_OPUS:
        return OggOpusEncoder()
    return G711Encoder(encoding, rate)
