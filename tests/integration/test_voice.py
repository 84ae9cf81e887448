"""Voice agents end to end on TEST engines: barge-in reports what was heard, chains of nothing, real-time listeners.

The echo TEST voice aligns exactly (a word's samples are its characters' positions), so what a listener heard is
known here independently of the server; the tone TEST voice renders ahead of real time, for paced listeners.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from rillet.client import (
    AudioChunk,
    AudioEncoding,
    Client,
    Finished,
    FinishReason,
    GenerateStream,
    InvalidArgumentError,
    Session,
    SpokenText,
    WordTiming,
)
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from rillet.v1 import inference_service_pb2, inference_service_pb2_grpc, speech_pb2
from tests.conftest import ServerFactory
from tests.doubles import EchoSpeechEngine, ToneSpeechEngine


@pytest.fixture
async def echo_client(make_server: ServerFactory) -> AsyncIterator[Client]:
    text = SyntheticEngine(SyntheticConfig(tokens_per_second=200.0, first_output_delay_s=0.0))
    server = await make_server([text, EchoSpeechEngine()])
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        yield client


def heard(words: list[WordTiming], text: str, played: int) -> tuple[str, int, int]:
    """What a listener heard, worked out here: whole words whose audio ended within `played`."""
    done = [word for word in words if word.end_sample <= played]
    if not done:
        return "", 0, 0
    return text[done[0].start_char : done[-1].end_char], done[0].start_char, done[-1].end_char


async def collect_text(stream: GenerateStream) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in stream:
        if isinstance(event, Finished):
            return "".join(parts), event
        parts.append(event.text)
    raise AssertionError("no Finished")


@dataclass
class BargeIn:
    """A chained reply cut short: its text, the words received, the samples played and what each terminal said."""

    text: str
    words: list[WordTiming]
    played: int
    spoken: SpokenText | None
    synthesis: Finished | None
    generation: Finished


async def barge_in(
    session: Session, prompt: str, max_tokens: int, wanted: int, rng: random.Random, max_chunk_s: float | None = None
) -> BargeIn:
    """Speak a generation, receive at least `wanted` samples, then interrupt at a random point of what arrived."""
    generation = await session.generate(prompt, max_tokens=max_tokens)
    speech = await session.synthesize(text_from=generation, word_timings=True, max_chunk_s=max_chunk_s)
    generated = asyncio.create_task(collect_text(generation))
    words: list[WordTiming] = []
    received = 0
    async for event in speech:
        assert isinstance(event, AudioChunk)
        words += event.words
        received = event.offset_samples + event.samples
        if received >= wanted:
            break
    played = rng.randint(0, received)
    spoken = await speech.interrupt(played)
    text, generation_finished = await generated
    return BargeIn(text, words, played, spoken, speech.finished, generation_finished)


@pytest.mark.parametrize("seed", range(6))
async def test_barge_in_at_a_random_point_of_a_chained_reply_reports_the_words_played(
    echo_client: Client, seed: int
) -> None:
    rng = random.Random(seed)
    chunk_s = 0.01 * rng.randint(1, 4)  # 160 to 640 characters a chunk
    async with echo_client.session() as session:
        cut = await barge_in(session, "tell me everything", 400, rng.randint(1, 600), rng, max_chunk_s=chunk_s)
    assert cut.synthesis is not None
    assert cut.synthesis.reason is FinishReason.CANCELLED
    assert cut.spoken is not None
    assert (cut.spoken.text, cut.spoken.start_char, cut.spoken.end_char) == heard(cut.words, cut.text, cut.played)
    assert cut.spoken.played_samples == cut.played
    assert cut.text[cut.spoken.start_char : cut.spoken.end_char] == cut.spoken.text
    # The generation was still in flight (400 tokens at 200/s): its own terminal says the same, in its text.
    assert cut.generation.reason is FinishReason.CANCELLED
    assert cut.generation.spoken == cut.spoken


async def test_played_samples_beyond_the_audio_sent_count_as_all_of_it(echo_client: Client) -> None:
    async with echo_client.session() as session:
        speech = await session.synthesize("One two three. Four five six.", streaming_input=True, word_timings=True)
        events = aiter(speech)
        received = 0
        while received < 29:  # the whole text (its input is still open: no Finished comes)
            chunk = await anext(events)
            assert isinstance(chunk, AudioChunk)
            received += chunk.samples
        await session.cancel(speech.request_id, played_samples=10**9)
        finished = await anext(events)
    assert isinstance(finished, Finished)
    assert finished.spoken == SpokenText("One two three. Four five six.", 0, 29, 29)


async def test_an_interrupt_after_the_synthesis_finished_is_worked_out_from_the_words_received(
    echo_client: Client,
) -> None:
    async with echo_client.session() as session:
        speech = await session.synthesize("Hello there, old friend.", word_timings=True)
        events = [event async for event in speech]  # all of it arrived, and the Finished
        assert isinstance(events[-1], Finished)
        assert events[-1].reason is FinishReason.STOP
        assert await speech.interrupt(14) == SpokenText("Hello there,", 0, 12, 14)
        assert await speech.interrupt(0) == SpokenText("", 0, 0, 0)
        plain = await session.synthesize("No word timings asked for.")
        async for _ in plain:
            pass
        assert await plain.interrupt(5) is None  # the SDK has no words to go by


async def test_played_samples_on_a_generation_is_refused_and_changes_nothing(echo_client: Client) -> None:
    async with echo_client.session() as session:
        generation = await session.generate("keep going", max_tokens=50)
        await session.cancel(generation.request_id, played_samples=100)
        text, finished = await collect_text(generation)
        rejections = list(session.rejections)
    assert finished.reason is FinishReason.LENGTH
    assert len(text.split()) == 50
    assert [(r.reason, r.metadata.get("field")) for r in rejections] == [("NOT_A_SYNTHESIS", "cancel.played_samples")]


async def test_a_generation_with_nothing_to_speak_finishes_its_synthesis_with_no_audio(echo_client: Client) -> None:
    """A stop string matched at once: the model said nothing, which is no fault of the client's."""
    first = synthetic_text("stop at once", 1)
    async with echo_client.session() as session:
        generation = await session.generate("stop at once", max_tokens=20, stop=[first])
        speech = await session.synthesize(text_from=generation)
        text, generation_finished = await collect_text(generation)
        events = [event async for event in speech]
    assert (text, generation_finished.reason) == ("", FinishReason.STOP_SEQUENCE)
    assert len(events) == 1
    assert isinstance(events[0], Finished)
    assert events[0].reason is FinishReason.STOP
    assert events[0].usage.output_audio_s == 0


async def test_a_clients_own_empty_streaming_input_stays_invalid(echo_client: Client) -> None:
    async with echo_client.session() as session:
        speech = await session.synthesize(streaming_input=True)
        await speech.append_text("   ")
        await speech.end_input()
        with pytest.raises(InvalidArgumentError) as error:
            await speech.collect()
    assert error.value.reason == "EMPTY_TEXT"


LONG = "The river runs past the mill. " * 7  # 210 characters: 4.2 s of tone at 20 ms a character


async def play(chunks: AsyncIterator[AudioChunk | Finished], check: object = None) -> tuple[int, Finished]:
    """Read like a player: each chunk only once the one before has played, at real time. (samples, Finished)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    played = 0.0
    samples = 0
    async for event in chunks:
        if isinstance(event, Finished):
            return samples, event
        samples += event.samples
        played += event.samples / event.sample_rate_hertz
        if callable(check):
            check()
        await asyncio.sleep(max(0.0, started + played - loop.time()))
    raise AssertionError("no Finished")


@pytest.mark.parametrize("encoding", [AudioEncoding.LINEAR16, AudioEncoding.MULAW, AudioEncoding.OGG_OPUS])
async def test_a_listener_playing_at_real_time_gets_every_sample_and_is_never_ended_as_stalled(
    make_server: ServerFactory, encoding: AudioEncoding
) -> None:
    """The engine renders 10x faster than the listener plays; the listener reads each chunk once the one before has
    played, through the SDK's session, whose buffer for the request stays within its bound. Shortened from minutes
    to 4 s: the transport's and the kernel's buffers hold this much, so the server's writer never waits on the
    listener here; that it then is not taken for one that stopped reading is tested without a clock
    (tests/unit/test_outbox.py), and bench/bench_speech.py --paced-seconds runs it for minutes."""
    engine = ToneSpeechEngine(speedup=10.0)
    server = await make_server([SyntheticEngine(SyntheticConfig()), engine], limits={"stall_timeout_s": 0.5})
    bound = 8 * 1024
    async with (
        Client.connect(f"127.0.0.1:{server.port}") as client,
        client.session(request_buffer_bytes=bound) as session,
    ):
        speech = await session.synthesize(LONG, encoding=encoding, max_chunk_s=0.1)
        peak = 0

        def measure() -> None:
            nonlocal peak
            peak = max(peak, speech.buffered_bytes)

        samples, finished = await play(aiter(speech), measure)
    assert finished.reason is FinishReason.STOP
    rate = 8000 if encoding is AudioEncoding.MULAW else 48000 if encoding is AudioEncoding.OGG_OPUS else 16000
    assert samples == round(finished.usage.output_audio_s * rate)  # every sample produced, at the output's rate
    assert samples >= 4 * rate
    assert peak <= bound + 6 * 1024  # the bound, plus the one message that crossed it


async def test_a_raw_grpc_listener_at_real_time_finishes(make_server: ServerFactory) -> None:
    """The same with a plain generated stub and a one-shot call, as a new user would write it."""
    engine = ToneSpeechEngine(speedup=10.0)
    server = await make_server([SyntheticEngine(SyntheticConfig()), engine], limits={"stall_timeout_s": 0.5})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        params = speech_pb2.SynthesizeParams(text=LONG, encoding=speech_pb2.AUDIO_ENCODING_MULAW)
        call = stub.Synthesize(inference_service_pb2.SynthesizeRequest(params=params))
        loop = asyncio.get_running_loop()
        started, played, samples, reason = loop.time(), 0.0, 0, 0
        async for response in call:
            if response.HasField("finished"):
                reason = response.finished.reason
                break
            samples += response.audio_chunk.sample_count
            played += response.audio_chunk.sample_count / 8000
            await asyncio.sleep(max(0.0, started + played - loop.time()))
    assert reason == 1  # FINISH_REASON_STOP
    assert samples >= 4 * 8000


async def test_a_listener_that_stops_reading_is_still_ended_as_stalled(make_server: ServerFactory) -> None:
    engine = ToneSpeechEngine(speedup=1000.0)  # 168 s of audio (5 MiB), more than gRPC's windows hold
    server = await make_server([SyntheticEngine(SyntheticConfig()), engine], limits={"stall_timeout_s": 0.5})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = inference_service_pb2.SynthesizeRequest(params=speech_pb2.SynthesizeParams(text=LONG * 40))
        call = stub.Synthesize(request)
        await call.read()  # one chunk, then it stops reading for four times the stall limit
        await asyncio.sleep(2.0)

        async def read_the_rest() -> None:
            while await call.read() != grpc.aio.EOF:
                pass

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_the_rest()
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "read nothing" in (error.value.details() or "")
