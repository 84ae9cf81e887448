"""`rillet health`: one grpc.health.v1 Watch on the SDK's channel policy, until SERVING or its deadline."""

from __future__ import annotations

import asyncio
import socket

from rillet.client import ChannelConfig
from rillet.server.app import RilletServer
from rillet.server.cli import _serving
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from tests.conftest import ServerFactory, eventually

SERVICE = "rillet.v1.InferenceService"


class GatedEngine(SyntheticEngine):
    """A synthetic engine whose warm-up waits for the test to open a gate."""

    def __init__(self) -> None:
        super().__init__(SyntheticConfig())
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_watch_waits_through_warm_up_and_answers_once_serving() -> None:
    engine = GatedEngine()
    server = RilletServer(Settings(port=0), [engine])
    starting = asyncio.create_task(server.start())
    try:
        await eventually(lambda: server.port != 0)
        config = ChannelConfig(f"127.0.0.1:{server.port}")
        assert not await _serving(config, "", wait=0)  # warming up: NOT_SERVING, and no waiting asked for
        watching = asyncio.create_task(_serving(config, SERVICE, wait=30))
        await eventually(lambda: server.health._watcher_count_by_service[SERVICE] == 1)  # one watch, open
        assert not watching.done()
        engine.gate.set()  # the server pushes SERVING to the open watch
        assert await asyncio.wait_for(watching, timeout=30)
        await starting
        assert await _serving(config, "", wait=0)
        assert not await _serving(config, "no.such.Service", wait=0)  # SERVICE_UNKNOWN
    finally:
        engine.gate.set()
        await server.stop(grace_s=0)


async def test_with_a_wait_it_waits_for_a_server_that_is_not_up_yet(make_server: ServerFactory) -> None:
    port = free_port()
    config = ChannelConfig(f"127.0.0.1:{port}")
    assert not await _serving(config, "", wait=0)  # nothing listens: the first answer decides
    watching = asyncio.create_task(_serving(config, "", wait=30))
    server = await make_server(port=port)
    assert await asyncio.wait_for(watching, timeout=30)
    await server.stop(grace_s=0)
    assert not await _serving(config, "", wait=0.3)  # gone: no answer before the deadline
