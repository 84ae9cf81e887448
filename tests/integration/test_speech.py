"""Speech end to end on the real piper voice: chunks, streaming input, generate→speak chaining, cancel, errors."""

from __future__ import annotations

import asyncio
import random
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rillet.client import (
    AudioChunk,
    AudioEncoding,
    Client,
    Finished,
    FinishReason,
    InvalidArgumentError,
    NotFoundError,
    TokenDelta,
)
from rillet.server.app import RilletServer
from rillet.server.session.session import ENDED_SOURCES
from rillet.v1 import inference_service_pb2, inference_service_pb2_grpc, speech_pb2
from tests.conftest import ServerFactory, eventually
from tests.integration.test_voice import barge_in, heard

pytestmark = pytest.mark.voice

RATE = 22050
SENTENCE = "The quick brown fox jumps over the lazy dog. It was not amused, and said so plainly."


@pytest.fixture
async def speech_server(make_server: ServerFactory) -> RilletServer:
    return await make_server(speech_engine="piper", synthetic={"tokens_per_second": 25.0, "first_output_delay_s": 0.0})


@pytest.fixture
async def client(speech_server: RilletServer) -> AsyncIterator[Client]:
    async with Client.connect(f"127.0.0.1:{speech_server.port}") as c:
        yield c


def check_chunks(chunks: list[AudioChunk], max_samples: int) -> int:
    """Contiguous offsets from 0, no gap or overlap, bounded size; returns the total samples."""
    offset = 0
    for chunk in chunks:
        assert chunk.sample_rate_hertz == RATE
        assert chunk.channel_count == 1
        assert chunk.offset_samples == offset
        assert 0 < chunk.samples <= max_samples
        offset += chunk.samples
    return offset


async def test_one_shot_synthesis_is_placed_exactly_and_plausible(client: Client) -> None:
    events = [e async for e in client.synthesize(SENTENCE, max_chunk_s=0.1)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason is FinishReason.STOP
    samples = check_chunks(chunks, max_samples=round(RATE * 0.1))
    seconds = samples / RATE
    assert 0.03 * len(SENTENCE) < seconds < 0.15 * len(SENTENCE)
    assert finished.usage.output_audio_s == pytest.approx(seconds, abs=1e-3)
    assert finished.usage.input_characters == len(SENTENCE)
    assert chunks[0].text.startswith("The quick brown fox")
    assert sum(1 for c in chunks if c.text) >= 2  # the two sentences are synthesized as separate segments
    ttfa = finished.timings.time_to_first_output_s
    assert ttfa is not None
    assert ttfa < finished.timings.total_s


async def test_streaming_input_starts_audio_before_end_of_input(client: Client) -> None:
    async with client.session() as session:
        speech = await session.synthesize(streaming_input=True, max_chunk_s=0.2)
        iterator = aiter(speech)
        await speech.append_text("Hello there, my friend. ")
        await speech.append_text("This part is still being typed")
        first = await asyncio.wait_for(anext(iterator), timeout=30)  # the input has not ended yet
        assert isinstance(first, AudioChunk)
        assert first.text.startswith("Hello there")
        await speech.append_text(" and ends here.")
        await speech.end_input()
        rest = [e async for e in iterator]
    chunks = [first, *(e for e in rest if isinstance(e, AudioChunk))]
    check_chunks(chunks, max_samples=round(RATE * 0.2))
    finished = rest[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.input_characters == len(
        "Hello there, my friend. This part is still being typed and ends here."
    )


async def test_half_close_ends_open_streaming_input(speech_server: RilletServer, client: Client) -> None:
    session = client.session()
    speech = await session.synthesize("Half closing ends the input.", streaming_input=True)
    await session.close()
    result = await speech.collect()
    assert result.finished.reason is FinishReason.STOP
    assert len(result.audio) > 0


async def test_chained_audio_starts_before_the_generation_finishes(client: Client) -> None:
    order: list[str] = []
    async with client.session() as session:
        generation = await session.generate("a story to read aloud", max_tokens=60)
        speech = await session.synthesize(text_from=generation, max_chunk_s=0.2)

        async def read_text() -> str:
            text = ""
            async for event in generation:
                if isinstance(event, TokenDelta):
                    text += event.text
                else:
                    order.append("generate finished")
            return text

        async def read_audio() -> list[AudioChunk]:
            chunks: list[AudioChunk] = []
            async for event in speech:
                if isinstance(event, AudioChunk):
                    if not chunks:
                        order.append("first audio")
                    chunks.append(event)
            return chunks

        text, chunks = await asyncio.gather(read_text(), read_audio())
    assert order.index("first audio") < order.index("generate finished")
    check_chunks(chunks, max_samples=round(RATE * 0.2))
    assert speech.finished is not None
    assert speech.finished.usage.input_characters == len(text)  # it spoke exactly the generated text


async def test_cancelling_the_generation_cancels_the_speech(speech_server: RilletServer, client: Client) -> None:
    async with client.session() as session:
        generation = await session.generate("never finished", max_tokens=1000)
        speech = await session.synthesize(text_from=generation)
        text_events = aiter(generation)
        await anext(text_events)
        await session.cancel(generation.request_id)
        result = await speech.collect()
        assert result.finished.reason is FinishReason.CANCELLED
        assert [e async for e in text_events][-1].reason is FinishReason.CANCELLED  # type: ignore[union-attr]
    await eventually(lambda: speech_server.router.active() == 0)


async def test_cancelling_the_speech_stops_synthesis_and_spares_the_generation(
    speech_server: RilletServer, client: Client
) -> None:
    async with client.session() as session:
        generation = await session.generate("keep going", max_tokens=30)
        speech = await session.synthesize(SENTENCE * 20)
        iterator = aiter(speech)
        assert isinstance(await anext(iterator), AudioChunk)
        await session.cancel(speech.request_id)
        last = [e async for e in iterator][-1]
        assert isinstance(last, Finished)
        assert last.reason is FinishReason.CANCELLED
        assert last.usage.output_audio_s < 0.06 * len(SENTENCE * 20)
        assert (await generation.collect()).finished.reason is FinishReason.LENGTH
    await eventually(lambda: speech_server.router.active() == 0)


async def test_speech_errors_fail_only_their_request(client: Client) -> None:
    async with client.session() as session:
        neighbour = await session.generate("neighbour", max_tokens=20)
        cases = [
            (await session.synthesize("   "), InvalidArgumentError, "EMPTY_TEXT"),
            (await session.synthesize("hi", voice="nobody"), NotFoundError, "MODEL_NOT_FOUND"),
            (await session.synthesize("hi", sample_rate_hertz=3000), InvalidArgumentError, "UNSUPPORTED_SAMPLE_RATE"),
            (await session.synthesize("hi", max_chunk_s=5.0), InvalidArgumentError, "CHUNK_DURATION_OUT_OF_RANGE"),
            (await session.synthesize(text_from="ghost"), NotFoundError, "UNKNOWN_SOURCE_REQUEST"),
            (await session.synthesize("hi", text_from=neighbour), InvalidArgumentError, "CONFLICTING_TEXT_SOURCES"),
        ]
        for stream, error, reason in cases:
            with pytest.raises(error) as caught:
                await stream.collect()
            assert caught.value.reason == reason
        speech = await session.synthesize("A real sentence.", streaming_input=True)
        chained_to_speech = await session.synthesize(text_from=speech.request_id)
        with pytest.raises(InvalidArgumentError) as caught:
            await chained_to_speech.collect()
        assert caught.value.reason == "SOURCE_NOT_GENERATE"
        await speech.end_input()
        await speech.append_text("too late")
        await session.cancel("ghost")
        assert (await speech.collect()).finished.reason is FinishReason.STOP
        result = await neighbour.collect()
        assert result.finished.reason is FinishReason.LENGTH
        finished_text = await session.synthesize(text_from=neighbour)  # ended, so its whole text is spoken at once
        spoken = await finished_text.collect()
        assert spoken.finished.reason is FinishReason.STOP
        assert spoken.audio
    reasons = [r.reason for r in session.rejections]
    assert reasons == ["INPUT_ENDED", "UNKNOWN_REQUEST_ID"]


async def test_a_chained_synthesis_read_after_its_generation_ended_speaks_it_within_the_last_ended(
    client: Client,
) -> None:
    async with client.session() as session:
        generations = [await session.generate(f"short {i}", max_tokens=2) for i in range(ENDED_SOURCES + 1)]
        for generation in generations:
            assert (await generation.collect()).finished.reason is FinishReason.LENGTH
        newest = await (await session.synthesize(text_from=generations[-1])).collect()
        assert newest.finished.reason is FinishReason.STOP
        assert newest.audio  # what a client sending both starts at once gets, whichever the session read first
        with pytest.raises(NotFoundError) as gone:
            await (await session.synthesize(text_from=generations[0])).collect()
        assert gone.value.reason == "UNKNOWN_SOURCE_REQUEST"  # only the last ENDED_SOURCES are kept


async def test_unsupported_encoding(speech_server: RilletServer) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{speech_server.port}") as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        params = speech_pb2.SynthesizeParams(text="hello", encoding=99)  # type: ignore[arg-type]
        call = stub.Synthesize(inference_service_pb2.SynthesizeRequest(params=params))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "encoding" in (caught.value.details() or "")


async def test_cli_speak_writes_a_wav(speech_server: RilletServer, tmp_path: Path) -> None:
    out = tmp_path / "speech.wav"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "speak", "Testing the command line.", "-o", str(out),
        "-t", f"127.0.0.1:{speech_server.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert b"TTFA" in stderr
    with wave.open(str(out), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert 0.5 < wav.getnframes() / RATE < 5


@pytest.mark.parametrize("seed", range(3))
async def test_barge_in_on_real_speech_reports_the_words_whose_audio_was_played(client: Client, seed: int) -> None:
    """A chained reply on the real voice, cut at a random point of the audio received: the heard text is the
    generation's text through the last word whose (piper-aligned) audio ended by then, on both terminals."""
    rng = random.Random(seed)
    async with client.session() as session:
        cut = await barge_in(session, "Tell me a story", 120, rng.randint(RATE // 2, 3 * RATE), rng)
    assert cut.spoken is not None
    assert (cut.spoken.text, cut.spoken.start_char, cut.spoken.end_char) == heard(cut.words, cut.text, cut.played)
    assert cut.spoken.played_samples == cut.played
    assert all(cut.text[w.start_char : w.end_char] == w.text for w in cut.words)
    assert cut.generation.spoken == cut.spoken


async def test_every_encoding_arrives_on_the_wire_with_its_rate_and_sample_counts(client: Client) -> None:
    for encoding, rate in [
        (AudioEncoding.OGG_OPUS, 48000),
        (AudioEncoding.MULAW, 8000),
        (AudioEncoding.ALAW, 8000),
        (AudioEncoding.LINEAR16, 24000),
    ]:
        asked = 24000 if encoding is AudioEncoding.LINEAR16 else 0
        events = [
            e async for e in client.synthesize("Hello from the wire.", encoding=encoding, sample_rate_hertz=asked)
        ]
        chunks = [e for e in events if isinstance(e, AudioChunk)]
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert all(c.sample_rate_hertz == rate for c in chunks)
        offset = 0
        for chunk in chunks:
            assert chunk.offset_samples == offset
            offset += chunk.samples
        assert offset == round(finished.usage.output_audio_s * rate)
        if encoding is AudioEncoding.OGG_OPUS:
            assert chunks[0].audio.startswith(b"OggS")
        elif encoding is not AudioEncoding.LINEAR16:
            assert sum(len(c.audio) for c in chunks) == offset  # one byte a sample
