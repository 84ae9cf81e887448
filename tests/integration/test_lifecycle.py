"""Health transitions, reflection, and the drain on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rillet.client import Client, FinishReason, UnavailableError
from rillet.server.app import RilletServer
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from tests.conftest import ServerFactory, eventually

SERVICE = "rillet.v1.InferenceService"


class GatedEngine(SyntheticEngine):
    """A synthetic engine whose warm-up waits for the test to open a gate."""

    def __init__(self) -> None:
        super().__init__(SyntheticConfig())
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()


async def health_of(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return int(response.status)


async def test_health_not_serving_while_warming_serving_after_and_not_serving_when_draining() -> None:
    engine = GatedEngine()
    server = RilletServer(Settings(port=0), [engine])
    starting = asyncio.create_task(server.start())
    try:
        await eventually(lambda: server.port != 0)
        for service in ("", SERVICE):
            assert await health_of(server.port, service) == health_pb2.HealthCheckResponse.NOT_SERVING
        engine.gate.set()
        await starting
        for service in ("", SERVICE):
            assert await health_of(server.port, service) == health_pb2.HealthCheckResponse.SERVING
        async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
            stream = await session.generate("keep the server draining", max_tokens=400)
            iterator = aiter(stream)
            await anext(iterator)  # in flight for sure (and kept referenced: a dropped iterator cancels)
            stopping = asyncio.create_task(server.stop(grace_s=5.0))
            await eventually(lambda: server.lifecycle.draining)
            assert await health_of(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
            await iterator.aclose()  # type: ignore[attr-defined]
            await stopping
    finally:
        engine.gate.set()
        await server.stop(grace_s=0)


async def test_reflection_lists_the_service(server: RilletServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)

        responses = [r async for r in stub.ServerReflectionInfo(ask())]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto  # the schema is served, not just the name


async def test_drain_lets_in_flight_finish_and_refuses_new_work(make_server: ServerFactory) -> None:
    server = await make_server(synthetic={"tokens_per_second": 100.0, "first_output_delay_s": 0.0})
    target = f"127.0.0.1:{server.port}"
    async with Client.connect(target) as client, client.session() as session:
        in_flight = await session.generate("finish me", max_tokens=30)
        iterator = aiter(in_flight)
        await anext(iterator)
        stopping = asyncio.create_task(server.stop(grace_s=10.0))
        await eventually(lambda: server.lifecycle.draining)
        late = await session.generate("too late", max_tokens=3)
        with pytest.raises(UnavailableError):
            await late.collect()
        async with Client.connect(target) as other:
            with pytest.raises(UnavailableError):
                await other.generate("new call", max_tokens=3).collect()
        rest = [e async for e in iterator]
        assert rest[-1].reason is FinishReason.LENGTH  # type: ignore[union-attr]
        await stopping
        with pytest.raises(UnavailableError):
            await session.close()  # the call ended with UNAVAILABLE once its work was done
    assert server.router.active() == 0


async def test_drain_grace_expiry_cancels_with_unavailable(make_server: ServerFactory) -> None:
    server = await make_server(synthetic={"tokens_per_second": 20.0, "first_output_delay_s": 0.0})
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        endless = await session.generate("never done in time", max_tokens=1000)
        iterator = aiter(endless)
        await anext(iterator)
        await server.stop(grace_s=0.2)
        with pytest.raises(UnavailableError) as caught:
            async for _ in iterator:
                pass
        assert "shut down" in caught.value.message
    assert server.router.active() == 0
    assert server.lifecycle.sessions == 0


async def test_one_shot_requests_during_normal_operation_leave_nothing_behind(server: RilletServer) -> None:
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        results = await asyncio.gather(*(client.generate(f"p{i}", max_tokens=5).collect() for i in range(10)))
    assert [r.text for r in results] == [synthetic_text(f"p{i}", 5) for i in range(10)]
    await eventually(lambda: server.router.active() == 0 and server.lifecycle.sessions == 0)
