"""What the server makes of the engine contract: routing by kind, and health that follows the engines' own."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.client import Client, NotFoundError
from rillet.server.app import RilletServer, serve
from rillet.server.config import SchedulerConfig, Settings
from rillet.server.scheduler import Router
from rillet.server.types import ModelInfo, ModelKind
from tests.conftest import ServerFactory, eventually
from tests.doubles import DyingEngine, EchoSpeechEngine


async def health_of(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        return int(response.status)


async def test_an_engine_that_turns_unhealthy_while_idle_flips_health_and_the_process_exits_non_zero() -> None:
    dying = DyingEngine()
    server = RilletServer(Settings(port=0), [dying, EchoSpeechEngine()])
    serving = asyncio.create_task(serve(server.settings, server))
    await eventually(lambda: server.router.started)
    assert await health_of(server.port) == health_pb2.HealthCheckResponse.SERVING
    dying.dead = True  # no request in flight notices: the health probe must
    assert await health_of(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await asyncio.wait_for(serving, timeout=30) == 1
    assert server.engine_died


async def test_a_healthy_shutdown_is_not_mistaken_for_a_dead_engine(make_server: ServerFactory) -> None:
    server = await make_server()
    assert await health_of(server.port) == health_pb2.HealthCheckResponse.SERVING
    await server.stop(grace_s=0)
    assert not server.engine_died


async def test_a_voice_name_is_not_a_model_and_a_model_name_is_not_a_voice(make_server: ServerFactory) -> None:
    server = await make_server([DyingEngine(), EchoSpeechEngine()])
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(NotFoundError):
            await client.generate("hello", model="echo-voice", max_tokens=2).collect()
        with pytest.raises(NotFoundError):
            await client.synthesize("hello", voice="synthetic-test").collect()


class _Mislabelled(EchoSpeechEngine):
    """A TEST speech engine that lists a text model: the router must refuse it."""

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        return (ModelInfo("looks-like-text", ModelKind.TEXT_GENERATION, self.name),)


async def test_an_engine_listing_models_of_the_other_kind_is_refused_at_start() -> None:
    router = Router([_Mislabelled()], SchedulerConfig())
    with pytest.raises(ValueError, match="serves speech_synthesis but lists 'looks-like-text'"):
        await router.start()
