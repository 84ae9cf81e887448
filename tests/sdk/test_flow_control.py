"""A session holds a bounded number of bytes per request; past it, the SDK stops reading and the server is held."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rillet.client import Client, Finished, FinishReason, GenerateStream, TokenDelta, UnavailableError
from rillet.client._inbox import Inbox
from rillet.v1 import common_pb2, generation_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.conftest import eventually
from tests.sdk import raw_server

PIECE = 16 * 1024  # the text of each token delta the fake server sends for a "big" request
BIG = 2048  # deltas of a "big" request: 32 MiB, far more than a bound plus what HTTP/2 and gRPC buffer in between
BOUND = 256 * 1024
FINISHED = common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH)


def piece(i: int) -> str:
    return f"{i:08d}".ljust(PIECE, ".")


@dataclass
class Fake:
    """A raw Session server: a request whose prompt is "big" gets BIG fat deltas, any other one delta; all in order.

    It writes the requests one after the other, as they started, and counts what gRPC accepted from it.
    """

    written: dict[str, int] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)

    async def session(self, requests: AsyncIterator[pb.SessionRequest], context: Any) -> None:
        started: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                if request.WhichOneof("kind") == "cancel":
                    self.cancelled.add(request.request_id)
                else:
                    started.put_nowait(request)
            started.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        while (request := await started.get()) is not None:
            rid = request.request_id
            count = BIG if request.start_generate.params.text == "big" else 1
            self.written[rid] = 0
            for seq in range(count):
                if rid in self.cancelled:
                    cancelled = common_pb2.Finished(reason=common_pb2.FINISH_REASON_CANCELLED)
                    await context.write(pb.SessionResponse(request_id=rid, seq=seq, finished=cancelled))
                    break
                delta = generation_pb2.TokenDelta(text=piece(seq), token_ids=[seq])
                await context.write(pb.SessionResponse(request_id=rid, seq=seq, token_delta=delta))
                self.written[rid] += 1
            else:
                await context.write(pb.SessionResponse(request_id=rid, seq=count, finished=FINISHED))
        await reader


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Fake, str]]:
    fake = Fake()
    async with raw_server.serving({"Session": raw_server.session(fake.session)}) as target:
        yield fake, target


def inbox(stream: GenerateStream) -> Inbox:
    assert stream._inbox is not None
    return stream._inbox


def paused(stream: GenerateStream) -> bool:
    """The session's reader waits for room in this request's inbox (and reads nothing from the call meanwhile)."""
    return inbox(stream)._room is not None


def most() -> int:
    """The bound plus one message: what an inbox may hold."""
    return BOUND + PIECE + 64


def pieces(events: list[TokenDelta | Finished]) -> Iterator[str]:
    for event in events:
        if isinstance(event, TokenDelta):
            yield event.text


async def test_a_request_nobody_reads_holds_its_bound_and_pushes_back_then_delivers_everything(
    fake: tuple[Fake, str],
) -> None:
    server, target = fake
    async with Client.connect(target) as client, client.session(request_buffer_bytes=BOUND) as session:
        stream = await session.generate("big")
        await eventually(lambda: paused(stream))
        assert BOUND <= stream.buffered_bytes <= most()
        held = len(inbox(stream)._items)
        # The server could not send it all: what gRPC and HTTP/2 buffer between the two ends is far below 32 MiB.
        assert server.written[stream.request_id] < BIG
        assert stream.buffered_bytes <= most()
        assert len(inbox(stream)._items) == held  # the reader is paused: nothing more arrived
        events: list[TokenDelta | Finished] = []
        async for event in stream:
            events.append(event)
            assert stream.buffered_bytes <= most()
        assert list(pieces(events)) == [piece(i) for i in range(BIG)]  # all of it, in order
        assert events[-1] == stream.finished
        assert stream.finished is not None
        assert stream.finished.reason is FinishReason.LENGTH
        assert server.written[stream.request_id] == BIG


async def test_a_full_request_holds_the_session_until_it_is_read_or_closed(fake: tuple[Fake, str]) -> None:
    server, target = fake
    async with Client.connect(target) as client, client.session(request_buffer_bytes=BOUND) as session:
        big = await session.generate("big")
        small = await session.generate("small")  # the server sends it after big's
        await eventually(lambda: paused(big))
        assert small.buffered_bytes == 0  # behind big's messages on the one stream: head-of-line, by design
        await big.aclose()  # cancels big and drops what the SDK held of it: the session reads on
        assert big.buffered_bytes == 0
        result = await asyncio.wait_for(small.collect(), timeout=30)
        assert result.text == piece(0)
        assert big.request_id in server.cancelled
        assert server.written[big.request_id] < BIG


async def test_a_stream_dropped_unread_does_not_hold_the_session(fake: tuple[Fake, str]) -> None:
    server, target = fake
    async with Client.connect(target) as client, client.session(request_buffer_bytes=BOUND) as session:
        dropped = await session.generate("big")
        held = inbox(dropped)
        await eventually(lambda: held._room is not None)
        small = await session.generate("small")
        del dropped
        gc.collect()
        result = await asyncio.wait_for(small.collect(), timeout=30)  # big's rest was read and dropped
        assert result.text == piece(0)
        assert held.buffered_bytes == 0
        assert server.written == {"r0": BIG, "r1": 1}


async def read_into(events: list[TokenDelta | Finished], stream: GenerateStream) -> None:
    async for event in stream:
        events.append(event)


async def test_aclose_ends_a_session_whose_reader_waits_for_room(fake: tuple[Fake, str]) -> None:
    _, target = fake
    async with Client.connect(target) as client:
        session = client.session(request_buffer_bytes=BOUND)
        stream = await session.generate("big")
        await eventually(lambda: paused(stream))
        await asyncio.wait_for(session.aclose(), timeout=30)  # the reader waited on the inbox, not on the call
        assert session._reader.done()
        events: list[TokenDelta | Finished] = []
        with pytest.raises(UnavailableError, match="the session was closed"):
            await read_into(events, stream)  # what was held is still there, then the session's end
    assert list(pieces(events)) == [piece(i) for i in range(len(events))]
    assert events


async def test_an_inbox_keeps_its_order_and_its_bound() -> None:
    box = Inbox(limit_bytes=10)
    box.put(TokenDelta("a", (1,)), 6)
    assert not box.full
    box.put(TokenDelta("b", (2,)), 6)
    assert box.full  # the bound plus one message
    room = asyncio.get_running_loop().create_task(box.room())
    await asyncio.sleep(0)
    assert not room.done()
    assert await box.get() == TokenDelta("a", (1,))
    await asyncio.wait_for(room, timeout=5)
    assert box.buffered_bytes == 6
    box.discard()
    box.put(TokenDelta("c", (3,)), 6)  # dropped: nobody reads a discarded inbox
    finished = Finished(FinishReason.CANCELLED, *_zero())
    box.put(finished)  # a terminal item is kept, for an iterator still running
    assert (box.buffered_bytes, box.full) == (0, False)
    assert await box.get() is finished


def _zero() -> tuple[Any, Any]:
    from rillet.client import Timings, Usage

    return Usage(0, 0, 0, 0.0), Timings(0.0, None, None, 0.0)
