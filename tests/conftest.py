"""Shared fixtures: an in-process server on an ephemeral port driven through the real SDK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
import pytest

from rillet.client import Client
from rillet.server.app import RilletServer
from rillet.server.config import Settings
from rillet.server.engine.base import Engine
from rillet.v1 import inference_service_pb2_grpc

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds (bounded); fail with the condition's source otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail("condition never became true")
        await asyncio.sleep(0.005)


ServerFactory = Callable[..., Awaitable[RilletServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with given settings overrides (and optional engines); all are stopped at the end."""
    started: list[RilletServer] = []

    async def make(engines: Sequence[Engine] | None = None, **overrides: object) -> RilletServer:
        defaults = {"port": 0, "text_engine": "synthetic", "speech_engine": "none"}
        settings = Settings(**{**defaults, **overrides})  # type: ignore[arg-type]
        server = RilletServer(settings, engines)
        started.append(server)
        await server.start()
        return server

    yield make
    for server in started:
        await server.stop(grace_s=0)


@pytest.fixture
async def server(make_server: ServerFactory) -> RilletServer:
    return await make_server()


@pytest.fixture
async def client(server: RilletServer) -> AsyncIterator[Client]:
    async with Client.connect(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture
async def channel(server: RilletServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> InferenceServiceAsyncStub:
    return inference_service_pb2_grpc.InferenceServiceStub(channel)
