"""close() finishes, aclose() ends now: the client's two ways to end, and what each does to the calls still open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rillet.client import Client, Finished, FinishReason, RequestCancelledError
from rillet.v1 import common_pb2, generation_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.conftest import eventually
from tests.sdk import raw_server


class Streamer:
    """A raw Generate server: `max_tokens` deltas, each released by the test (`step`); counts how calls ended."""

    def __init__(self) -> None:
        self.step = asyncio.Event()
        self.started = 0
        self.cancelled = 0
        self.finished = 0

    async def generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        self.started += 1
        try:
            for seq in range(request.params.max_tokens):
                await self.step.wait()
                yield pb.GenerateResponse(seq=seq, token_delta=generation_pb2.TokenDelta(text="x", token_ids=[seq]))
            finished = common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH)
            yield pb.GenerateResponse(seq=request.params.max_tokens, finished=finished)
            self.finished += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@pytest.fixture
async def streamer() -> AsyncIterator[tuple[Streamer, str]]:
    streamer = Streamer()
    async with raw_server.serving({"Generate": raw_server.generate(streamer.generate)}) as target:
        yield streamer, target
        streamer.step.set()


async def test_close_lets_the_calls_in_flight_finish_and_refuses_new_ones(streamer: tuple[Streamer, str]) -> None:
    server, target = streamer
    client = Client.connect(target)
    stream = client.generate("finish me", max_tokens=3)
    reading = asyncio.get_running_loop().create_task(stream.collect())
    closing = asyncio.get_running_loop().create_task(client.close())
    await eventually(lambda: client._closed)
    with pytest.raises(RuntimeError, match="closed"):
        client.generate("too late")
    with pytest.raises(RuntimeError, match="closed"):
        await client.list_models()
    assert not closing.done()  # it waits for the call, which waits for the server
    server.step.set()
    await asyncio.wait_for(closing, timeout=30)
    result = await reading
    assert result.finished.reason is FinishReason.LENGTH
    assert len(result.token_ids) == 3
    assert (server.finished, server.cancelled) == (1, 0)


async def test_close_with_a_grace_cancels_what_did_not_finish_in_it(streamer: tuple[Streamer, str]) -> None:
    server, target = streamer
    client = Client.connect(target)
    stream = client.generate("never read", max_tokens=3)
    await eventually(lambda: server.started == 1)
    await client.close(grace=0.05)  # the server never releases a token: the call is still open after the grace
    with pytest.raises(RequestCancelledError):
        await stream.collect()
    await eventually(lambda: server.cancelled == 1)
    assert server.finished == 0


async def test_aclose_and_leaving_async_with_cancel_at_once(streamer: tuple[Streamer, str]) -> None:
    server, target = streamer
    async with Client.connect(target) as client:
        first = client.generate("cut short", max_tokens=3)
        await eventually(lambda: server.started == 1)
        await client.aclose()
        await client.aclose()  # again: nothing more to do
    with pytest.raises(RequestCancelledError):
        await first.collect()
    async with Client.connect(target) as client:
        second = client.generate("cut short too", max_tokens=3)
        await eventually(lambda: server.started == 2)
    with pytest.raises(RequestCancelledError):
        await second.collect()
    await eventually(lambda: server.cancelled == 2)


async def test_a_stream_ends_now_with_aclose_and_a_finished_one_is_untouched(streamer: tuple[Streamer, str]) -> None:
    server, target = streamer
    server.step.set()
    async with Client.connect(target) as client:
        done = client.generate("whole", max_tokens=2)
        events = [event async for event in done]
        assert isinstance(events[-1], Finished)
        await done.aclose()  # it already ended: nothing is cancelled
        server.step.clear()
        cut = client.generate("cut", max_tokens=2)
        await eventually(lambda: server.started == 2)
        async with cut:
            pass  # leaving `async with` cancels it
        await eventually(lambda: server.cancelled == 1)
    assert server.finished == 1
