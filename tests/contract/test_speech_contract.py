"""The speech engine contract (engine/base.py SpeechEngine), run on every speech engine at the engine seam."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from rillet.server.errors import ResourceExhausted
from rillet.server.scheduler import Admission
from rillet.server.session.text import TextInput
from rillet.server.types import AudioChunk, FinishReason
from tests.conftest import eventually
from tests.contract.conftest import Speech, SpeechRun, read_speech

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "Rillet speaks as text arrives. Each chunk lands exactly where it belongs, and the stream ends once."


async def pieces(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


def assert_placed(run: SpeechRun, rate: int, max_chunk_samples: int) -> int:
    """Offsets contiguous from 0, whole PCM16 mono frames of at most `max_chunk_samples`; the total samples."""
    offset = 0
    for chunk in run.chunks:
        assert chunk.offset_samples == offset
        assert chunk.sample_rate_hertz == rate
        assert chunk.channel_count == 1
        assert len(chunk.audio) % 2 == 0
        assert 0 < chunk.samples <= max_chunk_samples
        offset += chunk.samples
    return offset


async def test_chunks_are_placed_exactly_by_offset_then_one_finish(speech: Speech) -> None:
    run = await read_speech(speech.engine.stream(speech.request(pieces([TEXT]), max_chunk_samples=64)))
    total = assert_placed(run, speech.rate, 64)
    assert total > 0
    assert run.finished is not None
    assert run.finished.usage.output_audio_seconds == pytest.approx(total / speech.rate, abs=1e-9)
    assert run.finished.usage.input_characters > 0
    assert speech.engine.active == 0


async def test_text_with_nothing_to_speak_finishes_normally_with_no_audio(speech: Speech) -> None:
    run = await read_speech(speech.engine.stream(speech.request(pieces(["", "   ", "\n"]))))
    assert run.chunks == []
    assert run.finished is not None
    assert run.finished.reason is FinishReason.STOP
    assert run.finished.usage.output_audio_seconds == 0
    assert speech.engine.active == 0


async def test_words_ride_the_chunk_their_audio_starts_in_and_point_into_the_text(speech: Speech) -> None:
    if not speech.engine.models[0].word_timings:
        pytest.skip("this voice gives no word timings")
    cut = TEXT.index(" ", 20) + 1  # pieces split between words (a word split across pieces is the engine's choice)
    run = await read_speech(
        speech.engine.stream(speech.request(pieces([TEXT[:cut], TEXT[cut:]]), max_chunk_samples=256))
    )
    words = [word for chunk in run.chunks for word in chunk.words]
    assert [word.text for word in words] == TEXT.split()
    assert all(TEXT[word.start_char : word.end_char] == word.text for word in words)
    for chunk in run.chunks:
        assert all(chunk.offset_samples <= w.start_sample < chunk.offset_samples + chunk.samples for w in chunk.words)


async def test_streaming_text_input_is_spoken_before_the_input_ends(speech: Speech) -> None:
    text = TextInput(streaming=True)
    stream = speech.engine.stream(speech.request(text.pieces(), max_chunk_samples=4096))
    text.feed("The first sentence is complete. ")
    run = SpeechRun()
    first = await anext(stream)
    assert isinstance(first, AudioChunk)  # audio for the first sentence while the input is still open
    run.chunks.append(first)
    text.feed("The second arrives later")
    text.feed(", in two pieces.")
    text.end()
    rest = await read_speech(stream)
    run.chunks += rest.chunks
    total = assert_placed(run, speech.rate, 4096)
    assert rest.finished is not None
    assert rest.finished.usage.output_audio_seconds == pytest.approx(total / speech.rate, abs=1e-9)


async def test_closing_the_stream_frees_active(speech: Speech) -> None:
    text = TextInput(streaming=True)
    stream = speech.engine.stream(speech.request(text.pieces(), max_chunk_samples=512))
    text.feed(TEXT + " " + TEXT)
    assert isinstance(await anext(stream), AudioChunk)
    assert speech.engine.active == 1
    await stream.aclose()
    await eventually(lambda: speech.engine.active == 0)


async def test_more_streams_than_slots_wait_in_admission_and_all_finish(speech: Speech) -> None:
    slots = speech.engine.slots
    queue = 2
    admission = Admission(slots, max_queue=queue, retry_after_s=1.0)
    peak = 0

    inputs = [TextInput(streaming=True) for _ in range(slots + queue)]

    async def one(text: TextInput) -> SpeechRun:
        nonlocal peak
        async with admission.admit():
            run = SpeechRun()
            async for event in speech.engine.stream(speech.request(text.pieces())):
                peak = max(peak, speech.engine.active)
                if isinstance(event, AudioChunk):
                    run.chunks.append(event)
                else:
                    run.finished = event
            return run

    tasks = [asyncio.create_task(one(text)) for text in inputs]
    await eventually(lambda: admission.queued == queue)  # the first `slots` hold their slots, waiting for text
    with pytest.raises(ResourceExhausted):
        async with admission.admit():
            pass
    for text in inputs:
        text.feed("Hello there.")
        text.end()
    runs = await asyncio.gather(*tasks)
    assert all(r.finished is not None and r.chunks for r in runs)
    assert 0 < peak <= slots
    assert admission.running == admission.queued == speech.engine.active == 0
