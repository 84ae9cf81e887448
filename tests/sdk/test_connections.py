"""Client.connect(connections=n): n connections, calls and sessions spread over them in turn."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from rillet.client import Client
from rillet.v1 import common_pb2, generation_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.sdk import raw_server


def peer_recording(peers: collections.Counter[str]) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """A raw server's Generate and Session that note the client connection (peer address) of every call."""

    async def generate(request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        peers[context.peer()] += 1
        yield pb.GenerateResponse(seq=0, token_delta=generation_pb2.TokenDelta(text="x", token_ids=[1]))
        usage = common_pb2.Usage(output_tokens=1)
        yield pb.GenerateResponse(
            seq=1, finished=common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH, usage=usage)
        )

    async def session(requests: AsyncIterator[pb.SessionRequest], context: Any) -> AsyncIterator[pb.SessionResponse]:
        peers[context.peer()] += 1
        async for _ in requests:
            pass
        return
        yield

    return {"Generate": raw_server.generate(generate), "Session": raw_server.session(session)}


async def test_calls_and_sessions_take_the_connections_in_turn() -> None:
    peers: collections.Counter[str] = collections.Counter()
    async with raw_server.serving(peer_recording(peers)) as target, Client.connect(target, connections=3) as client:
        for i in range(6):
            assert (await client.generate(f"p{i}").collect()).text == "x"
        assert sorted(peers.values()) == [2, 2, 2]  # three connections, two calls each
        for _ in range(3):
            async with client.session() as session:
                await session.close()
        assert sorted(peers.values()) == [3, 3, 3]


async def test_one_connection_by_default_and_at_least_one() -> None:
    peers: collections.Counter[str] = collections.Counter()
    async with raw_server.serving(peer_recording(peers)) as target:
        async with Client.connect(target) as client:
            for i in range(3):
                await client.generate(f"p{i}").collect()
        assert list(peers.values()) == [3]
    with pytest.raises(ValueError, match="at least 1"):
        Client.connect("127.0.0.1:1", connections=0)
