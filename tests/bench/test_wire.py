"""The verifying raw client: a Stream's checks message by message, one-shot calls and Sessions against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from rillet.bench.wire import SESSION_ENDED, RawSession, Request, Status, Stream, drain, frame
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.v1 import common_pb2, generation_pb2, speech_pb2
from rillet.v1 import inference_service_pb2 as pb
from rillet.v1 import inference_service_pb2_grpc as pb_grpc
from tests.conftest import ServerFactory
from tests.doubles import EchoSpeechEngine

FAST = SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0)


def delta(seq: int, tokens: int = 1) -> pb.GenerateResponse:
    return pb.GenerateResponse(seq=seq, token_delta=generation_pb2.TokenDelta(text="x", token_ids=[1] * tokens))


def finished(seq: int, tokens: int) -> pb.GenerateResponse:
    usage = common_pb2.Usage(output_tokens=tokens)
    return pb.GenerateResponse(
        seq=seq, finished=common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH, usage=usage)
    )


def chunk(seq: int, offset: int, samples: int, rate: int = 1000) -> pb.SynthesizeResponse:
    audio = speech_pb2.AudioChunk(
        audio=b"\0\0" * samples, sample_rate_hertz=rate, channel_count=1, offset_samples=offset
    )
    return pb.SynthesizeResponse(seq=seq, audio_chunk=audio)


def spoken(seq: int, seconds: float) -> pb.SynthesizeResponse:
    usage = common_pb2.Usage(output_audio_duration=duration_pb2.Duration(nanos=int(seconds * 1e9)))
    return pb.SynthesizeResponse(
        seq=seq, finished=common_pb2.Finished(reason=common_pb2.FINISH_REASON_STOP, usage=usage)
    )


def fed(stream: Stream, *responses: Any) -> Stream:
    for at, response in enumerate(responses, 1):
        stream.feed(response, float(at))
    return stream


# ---- a Stream's checks --------------------------------------------------------------------------------------------


def test_a_clean_stream_is_timed_and_counted() -> None:
    stream = fed(Stream("g", started=0.5), delta(0, 2), delta(1), finished(2, 3))
    assert stream.ok
    assert (stream.tokens, stream.outputs, stream.terminal, stream.lost) == (3, 2, "finished", None)
    assert (stream.first, stream.gaps, stream.ended, stream.last_at) == (1.0, [1.0], 3.0, 3.0)


@pytest.mark.parametrize(
    ("responses", "problem"),
    [
        ((delta(0), delta(2), finished(3, 2)), "seq 2 where 1 was due"),
        ((delta(0), finished(1, 1), delta(2)), "token_delta (seq 2) after the terminal finished"),
        ((delta(0), delta(1), finished(2, 3)), "2 tokens received, usage says 3"),
        ((delta(0), pb.GenerateResponse(seq=1)), "unexpected message kind None"),
    ],
)
def test_every_violation_loses_the_stream_with_its_reason(responses: tuple[Any, ...], problem: str) -> None:
    stream = fed(Stream("g"), *responses)
    assert (stream.ok, stream.lost) == (False, problem)


def test_nothing_after_the_terminal_is_counted() -> None:
    stream = fed(Stream("g"), delta(0), finished(1, 1), delta(2, 5))
    assert (stream.tokens, stream.outputs) == (1, 1)


def test_audio_must_follow_on_and_add_up_to_the_usage() -> None:
    assert fed(Stream("s", "speech"), chunk(0, 0, 100), chunk(1, 100, 100), spoken(2, 0.2)).ok
    gap = fed(Stream("s", "speech"), chunk(0, 0, 100), chunk(1, 150, 100), spoken(2, 0.2))
    assert gap.lost == "audio offset 150 where 100 was due"
    short = fed(Stream("s", "speech"), chunk(0, 0, 100), spoken(1, 0.5))
    assert short.lost == "0.100s of audio received, usage says 0.500s"
    unchecked = fed(Stream("s", "speech", counts=False), chunk(0, 7, 100), spoken(1, 0.5))
    assert unchecked.ok  # the soak's streams: order and terminal only


def test_a_call_that_ends_without_a_terminal_is_lost_and_one_that_fails_is_not() -> None:
    open_ended = fed(Stream("g"), delta(0))
    open_ended.closed(5.0)
    assert (open_ended.lost, open_ended.ended) == ("the stream ended without a terminal message", 5.0)
    failed = fed(Stream("g"), delta(0))
    failed.failed(Status(grpc.StatusCode.UNAVAILABLE, "DRAINING", None, "going away"), 6.0)
    assert (failed.ok, failed.lost, failed.error and failed.error.key) == (False, None, "UNAVAILABLE DRAINING")


# ---- one-shot calls and Sessions against the server on the synthetic engine -----------------------------------


async def test_a_one_shot_call_is_verified_and_its_failure_keeps_code_reason_and_message(
    make_server: ServerFactory,
) -> None:
    server = await make_server([SyntheticEngine(FAST)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        good = Stream("g")
        await drain(
            stub.Generate(pb.GenerateRequest(params=generation_pb2.GenerateParams(text="hi", max_tokens=5))), good
        )
        assert good.ok
        assert (good.tokens, good.terminal) == (5, "finished")
        assert good.first is not None
        assert good.ended is not None
        assert good.started < good.first <= good.ended
        bad = Stream("g")
        request = pb.GenerateRequest(params=generation_pb2.GenerateParams(text="hi", max_tokens=0))
        await drain(stub.Generate(request), bad)
        assert bad.error is not None
        assert not bad.problems
        assert bad.error.key == "INVALID_ARGUMENT MAX_TOKENS_OUT_OF_RANGE"
        assert bad.error.message
        stopped = Stream("g")
        call = stub.Generate(pb.GenerateRequest(params=generation_pb2.GenerateParams(text="hi", max_tokens=50)))
        assert await drain(call, stopped, lambda read: read.outputs >= 2)
        assert (stopped.outputs, stopped.terminal) == (2, None)
        call.cancel()


def start(request_id: str, max_tokens: int = 4, model: str = "") -> bytes:
    params = generation_pb2.GenerateParams(text="hi", max_tokens=max_tokens, model=model)
    return frame(request_id, start_generate=pb.StartGenerate(params=params))


async def test_a_session_routes_each_request_and_ends_them_all(make_server: ServerFactory) -> None:
    server = await make_server([SyntheticEngine(FAST), EchoSpeechEngine()])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        session = RawSession(channel)
        ok, unknown, refused = (session.track(rid, rid) for rid in ("ok", "unknown", "refused"))
        assert await session.send(start("ok"))
        assert await session.send(start("unknown", model="no-such-model"))
        too_long = speech_pb2.SynthesizeParams(text="Hi.", max_chunk_duration=duration_pb2.Duration(seconds=10**14))
        assert await session.send(frame("refused", start_synthesize=pb.StartSynthesize(params=too_long)))
        await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in (ok, unknown, refused))), 10)
        assert ok.stream.ok
        assert ok.stream.tokens == 4
        assert ok.terminal_order is not None
        assert unknown.stream.error is not None
        assert unknown.stream.terminal == "error"
        assert unknown.stream.error.key == "NOT_FOUND MODEL_NOT_FOUND"
        assert refused.stream.error is not None
        assert refused.stream.terminal is None
        assert refused.stream.error.key == "INVALID_ARGUMENT INVALID_DURATION"
        assert not refused.stream.problems
        await session.aclose()
        assert (await session.ended()).code is grpc.StatusCode.OK
        late = session.track("late", "late")
        assert late.done.is_set()
        assert late.stream.error is not None
        assert (late.stream.error.code, late.stream.error.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            SESSION_ENDED,
        )
        assert not await session.send(start("late"))


class Recording(RawSession):
    """A RawSession that notes what its hooks are told."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.strays: list[str] = []
        self.lates: list[tuple[str, int]] = []

    def stray(self, request_id: str, kind: str | None) -> None:
        self.strays.append(request_id)

    def late(self, request: Request, kind: str | None, seq: int) -> None:
        self.lates.append((request.id, seq))


async def test_a_session_that_breaks_the_contract_is_caught() -> None:
    async def session(requests: AsyncIterator[pb.SessionRequest], context: Any) -> AsyncIterator[pb.SessionResponse]:
        async for request in requests:
            rid = request.request_id
            yield pb.SessionResponse(request_id="ghost", seq=0, token_delta=generation_pb2.TokenDelta(token_ids=[1]))
            yield pb.SessionResponse(request_id=rid, seq=0, finished=finished(0, 0).finished)
            yield pb.SessionResponse(request_id=rid, seq=1, token_delta=generation_pb2.TokenDelta(token_ids=[1]))
            break  # the second request never gets its terminal; the call then ends OK

    handler = grpc.stream_stream_rpc_method_handler(
        session, pb.SessionRequest.FromString, pb.SessionResponse.SerializeToString
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("rillet.v1.InferenceService", {"Session": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            calls = Recording(channel)
            first, second = calls.track("a", "a"), calls.track("b", "b")
            assert await calls.send(start("a"))
            await asyncio.wait_for(calls.ended(), 10)
    finally:
        await server.stop(0)
    assert calls.strays == ["ghost"]
    assert calls.lates == [("a", 1)]
    assert first.stream.lost == "token_delta (seq 1) after the terminal finished"
    assert second.stream.lost == "the stream ended without a terminal message"
    assert first.done.is_set()
    assert second.done.is_set()
