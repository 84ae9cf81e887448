"""The piper engine on the real joe-us voice: audio shape, streaming input, cancellation, errors."""

from __future__ import annotations

import asyncio
import gc
import itertools
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterable

import numpy as np
import pytest
import pytest_asyncio
import soxr  # type: ignore[import-untyped]
from piper import PiperVoice

import rillet.server.engine.piper as piper_module
from rillet.server.audio.output import speak
from rillet.server.audio.transcript import Transcript
from rillet.server.config import PiperConfig
from rillet.server.engine.base import SpeechEvent
from rillet.server.engine.piper import PiperEngine, configured_voices, load_voice, render
from rillet.server.errors import NotFound, Unavailable
from rillet.server.types import (
    AudioChunk,
    AudioEncoding,
    AudioOutput,
    EngineEvent,
    EngineFinished,
    FinishReason,
    ModelKind,
    SynthesisRequest,
    Usage,
)
from tests.unit.test_audio_output import decode_opus, g711_decoder, snr_db

pytestmark = [pytest.mark.voice, pytest.mark.asyncio(loop_scope="module")]

VOICE = "en_US-joe-medium"
RATE = 22050
CHUNK = 2205  # 100 ms


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[PiperEngine]:
    engine = PiperEngine(PiperConfig())
    await engine.start()
    yield engine
    await engine.aclose()


async def pieces(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


def request(text: AsyncIterator[str], *, chunk: int = CHUNK) -> SynthesisRequest:
    return SynthesisRequest("r1", VOICE, text, chunk)


async def collect(stream: AsyncIterator[EngineEvent]) -> tuple[list[AudioChunk], EngineFinished]:
    chunks: list[AudioChunk] = []
    finished: list[EngineFinished] = []
    async for event in stream:
        assert not finished, "nothing may follow EngineFinished"
        if isinstance(event, AudioChunk):
            chunks.append(event)
        else:
            assert isinstance(event, EngineFinished)
            finished.append(event)
    assert len(finished) == 1
    return chunks, finished[0]


def assert_contiguous(chunks: list[AudioChunk], max_samples: int) -> int:
    """Offsets start at 0 with no gap or overlap; returns the total number of samples."""
    offset = 0
    for chunk in chunks:
        assert chunk.offset_samples == offset
        assert chunk.sample_rate_hertz == RATE
        assert chunk.channel_count == 1
        assert len(chunk.audio) % 2 == 0
        assert 0 < chunk.samples <= max_samples
        offset += chunk.samples
    return offset


async def test_the_voice_is_listed_with_its_sample_rate(engine: PiperEngine) -> None:
    [model] = engine.models
    assert model.name == VOICE
    assert model.kind is ModelKind.SPEECH_SYNTHESIS
    assert model.engine == "piper"
    assert model.sample_rate_hertz == RATE
    assert not model.is_test_engine
    assert engine.healthy()


async def test_speech_is_contiguous_bounded_and_plausibly_long(engine: PiperEngine) -> None:
    text = "The river runs quietly past the mill. Light falls on the old stone bridge, and birds sing."
    chunks, finished = await collect(engine.stream(request(pieces([text]))))
    total = assert_contiguous(chunks, CHUNK)
    seconds = total / RATE
    assert 0.03 * len(text) <= seconds <= 0.15 * len(text)
    audio = np.frombuffer(b"".join(c.audio for c in chunks), dtype=np.int16)
    assert np.abs(audio).max() > 1000  # speech, not silence
    assert finished.reason is FinishReason.STOP
    assert finished.usage.input_characters == len(text)
    assert finished.usage.output_audio_seconds == pytest.approx(seconds)
    assert finished.first_output_seconds is not None
    assert finished.first_output_seconds > 0
    labelled = [c.text for c in chunks if c.text]
    assert chunks[0].text == labelled[0] == "The river runs quietly past the mill."
    assert " ".join(labelled).split() == text.split()
    assert engine.active == 0


async def test_short_chunks_carry_each_word_where_its_audio_starts(engine: PiperEngine) -> None:
    text = "Yes, in the morning we paid $3.50 for it."
    chunks, _ = await collect(engine.stream(request(pieces([text[:9], text[9:]]), chunk=512)))
    assert_contiguous(chunks, 512)
    words = [word for chunk in chunks for word in chunk.words]
    assert [w.text for w in words] == text.split()
    assert all(text[w.start_char : w.end_char] == w.text for w in words)
    for chunk in chunks:
        assert all(chunk.offset_samples <= w.start_sample < chunk.offset_samples + chunk.samples for w in chunk.words)
    assert all(a.end_sample <= b.start_sample for a, b in itertools.pairwise(words))
    assert all(w.start_sample < w.end_sample for w in words)


async def test_text_that_renders_no_audio_labels_the_next_chunk(engine: PiperEngine) -> None:
    chunks, finished = await collect(engine.stream(request(pieces(["... ", "Then words."]))))
    assert [c.text for c in chunks if c.text] == ["... Then words."]
    assert finished.usage.input_characters == len("... Then words.")


async def test_streaming_input_gets_audio_before_the_input_ends(engine: PiperEngine) -> None:
    first_audio = asyncio.Event()
    log: list[str] = []

    async def text() -> AsyncIterator[str]:
        yield "This is the first sentence. "
        try:
            await asyncio.wait_for(first_audio.wait(), timeout=30)
        except TimeoutError:
            log.append("input timed out waiting for audio")
        log.append("input resumed")
        yield "And this is the second one, which arrives later."

    chunks: list[AudioChunk] = []
    async for event in engine.stream(request(text())):
        if isinstance(event, AudioChunk):
            if not chunks:
                log.append("first audio")
                first_audio.set()
            chunks.append(event)
    assert log == ["first audio", "input resumed"]
    assert_contiguous(chunks, CHUNK)
    assert [c.text for c in chunks if c.text] == [
        "This is the first sentence.",
        "And this is the second one, which arrives later.",
    ]


async def test_concurrent_requests_each_stay_contiguous(engine: PiperEngine) -> None:
    texts = ["One request, first of three.", "Another one speaks at once.", "And a third."]
    results = await asyncio.gather(*(collect(engine.stream(request(pieces([t])))) for t in texts))
    for chunks, finished in results:
        assert finished.usage.output_audio_seconds == pytest.approx(assert_contiguous(chunks, CHUNK) / RATE)
    assert engine.active == 0


@pytest.fixture
def render_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the text of every segment the engine renders."""
    calls: list[str] = []
    real = piper_module.render

    def counting(voice: PiperVoice, text: str) -> piper_module.Rendering:
        calls.append(text)
        return real(voice, text)

    monkeypatch.setattr(piper_module, "render", counting)
    return calls


LONG_TEXT = " ".join(f"This is sentence number {n}, which the engine should never reach." for n in range(12))


async def assert_no_more_renders(calls: list[str], engine: PiperEngine) -> None:
    """No segment starts after the cancel: wait long enough for several and check none did."""
    assert engine.active == 0
    started = len(calls)
    await asyncio.sleep(1.0)
    assert len(calls) == started
    assert started < 4
    chunks, _ = await collect(engine.stream(request(pieces(["Still working."]))))  # the engine still serves
    assert chunks


async def test_closing_the_stream_stops_synthesis(engine: PiperEngine, render_calls: list[str]) -> None:
    stream = engine.stream(request(pieces([LONG_TEXT])))
    assert isinstance(stream, AsyncIterator)
    first = await anext(stream)
    assert isinstance(first, AudioChunk)
    assert engine.active == 1
    await stream.aclose()
    await assert_no_more_renders(render_calls, engine)


async def test_cancelling_the_consumer_task_stops_synthesis(engine: PiperEngine, render_calls: list[str]) -> None:
    got_audio = asyncio.Event()

    async def consume() -> None:
        async for event in engine.stream(request(pieces([LONG_TEXT]))):
            if isinstance(event, AudioChunk):
                got_audio.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_audio.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_no_more_renders(render_calls, engine)


async def test_cancel_while_waiting_for_input_frees_the_engine(engine: PiperEngine) -> None:
    never = asyncio.Event()

    async def text() -> AsyncIterator[str]:
        yield "Half a sen"
        await never.wait()
        yield "tence."

    stream = engine.stream(request(text()))
    task = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert engine.active == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.active == 0


async def test_text_with_nothing_to_speak_finishes_with_no_audio(engine: PiperEngine) -> None:
    """A generation can say nothing (stopped at once): what is not the client's fault finishes normally."""
    chunks, finished = await collect(engine.stream(request(pieces(["", "  ", "\n\t"]))))
    assert chunks == []
    assert finished.reason is FinishReason.STOP
    assert finished.usage.output_audio_seconds == 0
    assert engine.active == 0


async def test_errors_from_the_text_stream_reach_the_consumer(engine: PiperEngine) -> None:
    async def failing() -> AsyncIterator[str]:
        yield "Some text, then"
        raise NotFound("the chained request is gone", reason="REQUEST_NOT_FOUND")

    with pytest.raises(NotFound, match="chained request"):
        await collect(engine.stream(request(failing())))
    assert engine.active == 0


async def test_a_stream_cut_by_engine_shutdown_fails_unavailable() -> None:
    engine = PiperEngine(PiperConfig(workers=1))
    with pytest.raises(Unavailable):
        engine.stream(request(pieces(["Not started yet."])))
    await engine.start()
    stream = engine.stream(request(pieces([LONG_TEXT])))
    assert isinstance(await anext(stream), AudioChunk)
    await engine.aclose()
    assert not engine.healthy()
    with pytest.raises(Unavailable) as error:
        async for _ in stream:
            pass
    assert error.value.reason == "SHUTTING_DOWN"
    assert engine.active == 0


async def test_a_lone_segment_renders_on_every_core_and_shared_ones_on_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(piper_module, "available_cores", lambda: 4)
    assert piper_module.solo_threads(PiperConfig()) == 4
    assert piper_module.solo_threads(PiperConfig(solo_threads=3)) == 3
    shared, solo = object(), object()
    voice = piper_module.Voice(shared, solo)  # type: ignore[arg-type]
    assert voice.pick(True) is solo
    assert voice.pick(False) is shared
    assert piper_module.Voice(shared, None).pick(True) is shared


async def test_the_engine_loads_a_solo_session_with_the_configured_threads() -> None:
    engine = PiperEngine(PiperConfig(solo_threads=2))
    await engine.start()
    try:
        voice = engine._voices[VOICE]
        assert voice.solo is not None
        assert voice.solo.session.get_session_options().intra_op_num_threads == 2
        assert voice.shared.session.get_session_options().intra_op_num_threads == 1
    finally:
        await engine.aclose()
    single = PiperEngine(PiperConfig(solo_threads=1))
    await single.start()
    try:
        assert single._voices[VOICE].solo is None
    finally:
        await single.aclose()


async def test_phonemizing_retains_no_memory(engine: PiperEngine) -> None:
    """piper-tts's espeakbridge leaks each clause it returns; the engine's mend releases it (engine/espeak.py)."""
    from piper import espeakbridge

    from rillet.server.engine.espeak import MendedGetPhonemes

    assert isinstance(espeakbridge.get_phonemes, MendedGetPhonemes)  # the engine put it in place when it loaded
    voice = engine._voices[VOICE].shared
    texts = [f"The river number {i} runs quietly past the mill, where light falls on stone." for i in range(100)]

    def retained() -> int:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            for text in texts:
                voice.phonemize(text)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return after - before

    # 500 phonemizations of two clauses: leaked, each clause kept ~230 bytes (≈ 230 KB in all).
    assert retained() < 20_000
    clauses = espeakbridge.get_phonemes("one, two.")
    assert len(clauses) == 2
    held = [(str(len(clauses)), "", False)]  # a tuple only a list refers to
    assert sys.getrefcount(clauses[0]) == sys.getrefcount(held[0]), "only the list refers to a clause"


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


async def test_release_memory_hands_back_what_a_long_segment_took() -> None:
    """release_memory: after long segments RSS is back near where it was; a default session keeps what it grew to."""
    files = configured_voices(PiperConfig())[0]
    released = load_voice(files, 1, release_memory=True)
    kept = load_voice(files, 1)
    for voice in (released, kept):
        assert render(voice, "Hi there.").pcm  # the first run's one-off allocations, out of the measurement
    text = "The river runs quietly past the old mill, where light falls on the grey stone and water turns slowly."
    start = _rss_mb()
    for _ in range(3):
        assert render(released, text).pcm
    after_released = _rss_mb()
    for _ in range(3):
        assert render(kept, text).pcm
    after_kept = _rss_mb()
    assert after_released - start < 60  # measured: +16 MB
    assert after_kept - after_released > 60, "the default arena keeps its growth: the measurement can see it"


@pytest.mark.parametrize(
    ("encoding", "rate", "min_snr_db"),
    [
        (AudioEncoding.OGG_OPUS, 48000, 14),  # measured 18.9 dB
        (AudioEncoding.MULAW, 8000, 30),  # measured 37.5 dB
        (AudioEncoding.ALAW, 8000, 30),
        (AudioEncoding.LINEAR16, 16000, 60),  # streamed vs one-shot resampling: within 2 LSB
    ],
)
async def test_each_encoding_of_real_speech_decodes_to_the_pcm_the_engine_produced(
    engine: PiperEngine, encoding: AudioEncoding, rate: int, min_snr_db: float
) -> None:
    native, _ = await collect(engine.stream(request(pieces(["The quick brown fox jumps over the lazy dog."]))))
    pcm = np.frombuffer(b"".join(c.audio for c in native), dtype=np.int16)

    async def replay() -> AsyncIterator[SpeechEvent]:
        for chunk in native:
            yield chunk
        yield EngineFinished(FinishReason.STOP, Usage())

    output = AudioOutput(encoding, rate, 0.1)
    chunks, _ = await collect(speak(replay(), output, Transcript()))  # type: ignore[arg-type]
    data = b"".join(c.audio for c in chunks)
    assert sum(c.samples for c in chunks) == round(len(pcm) * rate / RATE)
    if encoding is AudioEncoding.OGG_OPUS:
        decoded = decode_opus(data)
    elif encoding is AudioEncoding.LINEAR16:
        decoded = np.frombuffer(data, dtype="<i2").astype(np.float64)
    else:
        decoded = np.frombuffer(g711_decoder(encoding)(data, 2), dtype=np.int16).astype(np.float64)
    reference = soxr.resample(pcm, RATE, rate).astype(np.float64)
    assert len(decoded) == len(reference)
    assert snr_db(reference, decoded) > min_snr_db
