"""Hostile and careless clients through the real server: stalls, floods, idle inputs, drains."""

from __future__ import annotations

import asyncio
import collections
import random
import resource
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2

from rillet.client import Client, Finished, FinishReason, RequestStream, Session, TokenDelta
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, inference_service_pb2_grpc, speech_pb2
from tests.conftest import ServerFactory, eventually
from tests.doubles import EchoSpeechEngine, FloodEngine

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub

pb = inference_service_pb2


def start_generate(request_id: str, model: str = "", max_tokens: int = 10) -> pb.SessionRequest:
    params = generation_pb2.GenerateParams(model=model, text=f"prompt {request_id}", max_tokens=max_tokens)
    return pb.SessionRequest(request_id=request_id, start_generate=pb.StartGenerate(params=params))


def reason_of(status: object) -> str:
    for detail in status.details:  # type: ignore[attr-defined]
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def read_terminal(
    call: grpc.aio.StreamStreamCall[pb.SessionRequest, pb.SessionResponse], start_seq: int = 0
) -> pb.SessionResponse:
    """Read one request's messages until its terminal one, checking that seq is contiguous."""
    expected = start_seq
    while True:
        response = await call.read()
        assert isinstance(response, pb.SessionResponse)
        assert response.seq == expected
        expected += 1
        if response.WhichOneof("kind") in ("finished", "error"):
            return response


async def test_the_watchdog_watches_every_request_for_the_whole_session(make_server: ServerFactory) -> None:
    flood = FloodEngine()
    server = await make_server([flood], limits={"stall_timeout_s": 0.3})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = inference_service_pb2_grpc.InferenceServiceStub(channel).Session()
        for request_id in ("first", "second"):  # it fired once per session before, then never again
            await call.write(start_generate(request_id))
            await eventually(lambda: flood.active == 1)
            await eventually(lambda: flood.active == 0)  # freed while the client reads nothing
            terminal = await read_terminal(call)
            assert terminal.request_id == request_id
            assert terminal.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            assert reason_of(terminal.error) == "CLIENT_STALLED"
        # The session still serves a client that reads.
        await call.write(start_generate("third"))
        first = await call.read()
        assert isinstance(first, pb.SessionResponse)
        assert first.request_id == "third"
        await call.write(pb.SessionRequest(request_id="third", cancel=pb.Cancel()))
        terminal = await read_terminal(call, start_seq=1)
        assert terminal.finished.reason == common_pb2.FINISH_REASON_CANCELLED
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_a_slow_reader_gets_bounded_messages_and_pauses_the_engine(make_server: ServerFactory) -> None:
    flood = FloodEngine()
    limit = 64 * 1024
    server = await make_server([flood], limits={"max_request_buffer_bytes": limit})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = inference_service_pb2_grpc.InferenceServiceStub(channel).Session()
        await call.write(start_generate("f"))
        sizes = []
        for _ in range(50):
            response = await call.read()
            assert isinstance(response, pb.SessionResponse)
            sizes.append(len(response.token_delta.text))
            await asyncio.sleep(0.005)  # a client slower than the engine
        call.cancel()
    assert max(sizes) <= limit + 16384  # one coalesced message never exceeds the bound plus one delta
    assert max(sizes) > 16384  # the slow reader did get coalesced deltas
    await eventually(lambda: flood.active == 0)


async def test_an_idle_streaming_input_fails_and_frees_its_slot(make_server: ServerFactory) -> None:
    speech = EchoSpeechEngine()
    server = await make_server([SyntheticEngine(SyntheticConfig()), speech], limits={"input_idle_timeout_s": 0.3})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = inference_service_pb2_grpc.InferenceServiceStub(channel).Session()
        params = speech_pb2.SynthesizeParams(text="hello. ")
        start = pb.StartSynthesize(params=params, streaming_input=True)
        await call.write(pb.SessionRequest(request_id="s", start_synthesize=start))
        first = await call.read()
        assert isinstance(first, pb.SessionResponse)
        assert first.audio_chunk.text == "hello. "
        await call.write(pb.SessionRequest(request_id="s", append_text=pb.AppendText(text="more. ")))
        second = await call.read()
        assert isinstance(second, pb.SessionResponse)
        assert second.audio_chunk.text == "more. "
        terminal = await call.read()  # then nothing: the engine waits for text that does not come
        assert isinstance(terminal, pb.SessionResponse)
        assert terminal.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert reason_of(terminal.error) == "INPUT_IDLE"
        assert speech.active == 0
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_a_one_shot_generate_finishing_during_a_drain_ends_ok(make_server: ServerFactory) -> None:
    server = await make_server(synthetic={"tokens_per_second": 50.0, "first_output_delay_s": 0.0})
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        stream = client.generate("drain", max_tokens=10)
        iterator = aiter(stream)
        first = await anext(iterator)
        stopping = asyncio.create_task(server.stop(grace_s=5.0))
        await eventually(lambda: server.lifecycle.draining)
        rest = [event async for event in iterator]  # it raised UNAVAILABLE after `finished` before
        await stopping
    assert isinstance(rest[-1], Finished)
    assert rest[-1].reason is FinishReason.LENGTH
    deltas = [first, *rest[:-1]]
    assert all(isinstance(e, TokenDelta) for e in deltas)
    assert "".join(e.text for e in deltas if isinstance(e, TokenDelta)) == synthetic_text("drain", 10)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


@pytest.mark.timeout(120)
async def test_never_reading_clients_cost_bounded_memory_and_spare_their_neighbours(
    make_server: ServerFactory,
) -> None:
    """1,000 `rejected`-provoking messages (64 KiB ids) and 100 stalled streams: RSS grows < 150 MB in all.

    Before the bounds, 800 cancels with 256 KB ids alone grew the server's RSS by 416 MB. Here 64 MB of ids arrive
    and the flood engine produces as fast as it is pulled. What the server may hold per stalled stream: its outbox
    (256 KiB) and one message in the transport (≤ 256 KiB); the client's 64 KiB window holds the rest. Server and
    clients share this process, so the clients pin their HTTP/2 windows (no BDP probing): otherwise each client's
    windows grow to megabytes and the figure would measure the clients' buffers, not the server's.
    """
    flood = FloodEngine(SyntheticConfig(model_name="flood", slots=128))
    normal = SyntheticEngine(SyntheticConfig(tokens_per_second=200.0, first_output_delay_s=0.0))
    server = await make_server([normal, flood], limits={"stall_timeout_s": 1.0}, scheduler={"max_queue": 256})
    target = f"127.0.0.1:{server.port}"
    baseline = rss_bytes()
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) for _ in range(4)]
    try:
        stubs: list[InferenceServiceAsyncStub] = [inference_service_pb2_grpc.InferenceServiceStub(c) for c in channels]

        async def hostile_cancels() -> AsyncIterator[pb.SessionRequest]:
            for i in range(1000):
                yield pb.SessionRequest(request_id=f"{i:06d}" + "x" * 65536, cancel=pb.Cancel())

        rejecting = stubs[0].Session(hostile_cancels())
        stalled = [stubs[1 + i % 3].Session() for i in range(100)]
        for i, call in enumerate(stalled):
            await call.write(start_generate(f"stall{i}", model="flood"))
        await eventually(lambda: flood.active == 100, timeout=30)
        async with Client.connect(target) as client:  # a neighbour that reads keeps streaming meanwhile
            results = await asyncio.gather(*(client.generate(f"n{i}", max_tokens=20).collect() for i in range(8)))
        assert [r.text for r in results] == [synthetic_text(f"n{i}", 20) for i in range(8)]
        await eventually(lambda: flood.active == 0, timeout=30)  # every stalled request freed its slot
        growth = rss_bytes() - baseline
        for call in stalled:
            terminal = await read_terminal(call)
            assert reason_of(terminal.error) == "CLIENT_STALLED"
            call.cancel()
        rejected = [response async for response in rejecting]
        assert len(rejected) == 1000
        assert all(r.WhichOneof("kind") == "rejected" and len(r.request_id) <= 128 for r in rejected)
        await eventually(lambda: server.lifecycle.sessions == 0 and server.router.active() == 0, timeout=10)
        assert growth < 150 * 1024 * 1024, f"RSS grew {growth / 2**20:.0f} MB"
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.timeout(120)
async def test_a_cancellation_storm_leaves_slots_queues_and_tasks_at_baseline(make_server: ServerFactory) -> None:
    """1,000 requests cancelled at random points — queued, prefilling, decoding, synthesizing, by disconnect."""
    text = SyntheticEngine(SyntheticConfig(slots=8, tokens_per_second=400.0, first_output_delay_s=0.005))
    speech = EchoSpeechEngine(slots=4)
    server = await make_server([text, speech], scheduler={"max_queue": 1000})
    target = f"127.0.0.1:{server.port}"
    baseline_tasks = len(asyncio.all_tasks())
    rng = random.Random(7)
    outcomes: collections.Counter[str] = collections.Counter()

    async def one(session: Session, i: int) -> None:
        point = rng.choice(("at once", "after first", "after some", "never"))
        if rng.random() < 0.3:
            stream: RequestStream[Any] = await session.synthesize(f"piece {i}. ", streaming_input=True)
            feed = True
        else:
            stream = await session.generate(f"storm {i}", max_tokens=rng.randint(1, 40))
            feed = False
        received = 0
        if point == "at once":
            await session.cancel(stream.request_id)  # queued or prefilling, most likely
        async for event in stream:
            if isinstance(event, Finished):
                outcomes[event.reason.value] += 1
                return
            received += 1
            if feed and received < 3:
                await stream.append_text(f"more {received}. ")  # type: ignore[attr-defined]
            if (point == "after first" and received == 1) or (point == "after some" and received == 3):
                await session.cancel(stream.request_id)
            if point == "never" and feed and received == 3:
                await stream.end_input()  # type: ignore[attr-defined]

    async def calm_session(requests: range) -> None:
        async with Client.connect(target) as client, client.session() as session:
            await asyncio.gather(*(one(session, i) for i in requests))

    async def vanishing_session(requests: range) -> None:
        channel = grpc.aio.insecure_channel(target)
        call = inference_service_pb2_grpc.InferenceServiceStub(channel).Session()
        for i in requests:
            await call.write(start_generate(f"gone{i}", max_tokens=1000))
        await call.read()
        await channel.close()  # disconnect mid-stream, without a word
        outcomes["disconnected"] += len(requests)

    batches = [range(start, start + 50) for start in range(0, 1000, 50)]
    await asyncio.gather(*(vanishing_session(b) if n % 5 == 4 else calm_session(b) for n, b in enumerate(batches)))
    assert sum(outcomes.values()) == 1000
    assert outcomes["cancelled"] > 300  # the storm really cancelled (the rest finished before their cancel landed)
    await eventually(lambda: server.router.active() == 0 and server.lifecycle.sessions == 0, timeout=20)
    for route_info, _ in server.router.models():
        admission = server.router.resolve(route_info.name, route_info.kind).admission
        assert (admission.running, admission.queued) == (0, 0)
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks, timeout=10)
