"""Health transitions, reflection, and the drain on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rillet.client import (
    ChannelConfig,
    Client,
    FinishReason,
    InternalError,
    InvalidArgumentError,
    TokenDelta,
    UnavailableError,
)
from rillet.server.app import RilletServer, serve
from rillet.server.cli import _serving
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from rillet.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc
from tests.conftest import ServerFactory, eventually, free_port
from tests.doubles import DyingEngine, EchoSpeechEngine

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


Warming = tuple[GatedEngine, RilletServer, asyncio.Task[int]]


@pytest.fixture
async def warming() -> AsyncIterator[Warming]:
    """A server whose engine warms up until the test opens its gate: its port is bound, its start still running."""
    engine = GatedEngine()
    server = RilletServer(Settings(port=0), [engine])
    starting = asyncio.create_task(server.start())
    try:
        await eventually(lambda: server.port != 0)
        yield engine, server, starting
    finally:
        engine.gate.set()
        await server.stop(grace_s=0)


async def test_health_not_serving_while_warming_serving_after_and_not_serving_when_draining(
    warming: Warming,
) -> None:
    engine, server, starting = warming
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


async def test_rillet_health_watches_through_warm_up_and_answers_once_serving(
    warming: Warming,
) -> None:
    engine, server, starting = warming
    config = ChannelConfig(f"127.0.0.1:{server.port}")
    assert not await _serving(config, "", wait=0)  # warming up: NOT_SERVING, and no waiting asked for
    watching = asyncio.create_task(_serving(config, SERVICE, wait=30))
    await eventually(lambda: server.health._watcher_count_by_service[SERVICE] == 1)  # one Watch, open
    assert not watching.done()
    engine.gate.set()  # the server pushes SERVING to the open watch
    assert await asyncio.wait_for(watching, timeout=30)
    await starting
    assert await _serving(config, "", wait=0)
    assert not await _serving(config, "no.such.Service", wait=0)  # SERVICE_UNKNOWN


async def test_rillet_health_with_a_wait_waits_for_a_server_not_up_yet(make_server: ServerFactory) -> None:
    port = free_port()
    config = ChannelConfig(f"127.0.0.1:{port}")
    assert not await _serving(config, "", wait=0)  # nothing listens: the first answer decides
    watching = asyncio.create_task(_serving(config, "", wait=30))
    server = await make_server(port=port)
    assert await asyncio.wait_for(watching, timeout=30)
    await server.stop(grace_s=0)
    assert not await _serving(config, "", wait=0.3)  # gone: no answer before the deadline


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
        in_flight = await session.generate("finish me", max_tokens=80)  # 0.8 s: still running through the checks
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


async def test_requests_during_warm_up_are_unavailable_not_not_found() -> None:
    engine = GatedEngine()
    server = RilletServer(Settings(port=0), [engine])
    starting = asyncio.create_task(server.start())
    try:
        await eventually(lambda: server.port != 0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            params = generation_pb2.GenerateParams(text="early", max_tokens=2)
            with pytest.raises(grpc.aio.AioRpcError) as generate:
                await anext(aiter(stub.Generate(inference_service_pb2.GenerateRequest(params=params))))
            with pytest.raises(grpc.aio.AioRpcError) as list_models:
                await stub.ListModels(inference_service_pb2.ListModelsRequest())
        for caught in (generate, list_models):
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "warming up" in (caught.value.details() or "")
        async with Client.connect(f"127.0.0.1:{server.port}") as client:
            with pytest.raises(UnavailableError) as sdk:  # after the SDK's own retries
                await client.list_models()
            assert sdk.value.reason == "WARMING_UP"
            engine.gate.set()
            await starting
            assert (await client.generate("warm now", max_tokens=3).collect()).text == synthetic_text("warm now", 3)
    finally:
        engine.gate.set()
        await server.stop(grace_s=0)


async def test_list_models_publishes_the_max_tokens_validation_enforces(make_server: ServerFactory) -> None:
    server = await make_server(limits={"max_tokens": 100, "default_max_tokens": 16})
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        [model] = await client.list_models()
        assert model.max_tokens_limit == 100
        assert len((await client.generate("at the limit", max_tokens=100).collect()).text.split()) == 100
        with pytest.raises(InvalidArgumentError):
            await client.generate("past it", max_tokens=101).collect()


async def test_a_busy_port_fails_to_bind_unless_port_sharing_is_asked_for(make_server: ServerFactory) -> None:
    first = await make_server()
    with pytest.raises(OSError, match="cannot bind"):
        await make_server(port=first.port)
    shared = await make_server(reuse_port=True)
    second = await make_server(port=shared.port, reuse_port=True)
    assert second.port == shared.port


async def test_an_engine_that_dies_fails_its_requests_and_the_process_exits_non_zero() -> None:
    dying, speech = DyingEngine(), EchoSpeechEngine()
    server = RilletServer(Settings(port=0, drain_grace_s=10.0), [dying, speech])
    serving = asyncio.create_task(serve(server.settings, server))
    await eventually(lambda: server.router.started)
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        speaking = await session.synthesize("", streaming_input=True)  # the other engine's request, in flight
        neighbour = await session.generate("a neighbour on the same engine", max_tokens=1000)
        neighbour_events = aiter(neighbour)
        assert isinstance(await anext(neighbour_events), TokenDelta)
        with pytest.raises(InternalError) as died:
            await (await session.generate("die", max_tokens=10)).collect()
        assert died.value.reason == "ENGINE_DEAD"
        with pytest.raises(InternalError):
            async for _ in neighbour_events:  # every stream of the dead engine fails
                pass
        await speaking.append_text("still speaking. ")
        await speaking.end_input()
        spoken = await speaking.collect()  # the other engine's request finishes within the grace
        assert spoken.finished.reason is FinishReason.STOP
    assert await asyncio.wait_for(serving, timeout=30) == 1
    assert server.router.active() == 0


async def test_on_warm_runs_once_when_the_engines_are_warm() -> None:
    engine = GatedEngine()
    server = RilletServer(Settings(port=0), [engine])
    seen: list[str] = []

    def on_warm() -> None:
        seen.append("warm")
        assert server.router.started  # warm
        assert not server.stopped.is_set()

    starting = asyncio.create_task(server.start(on_warm=on_warm))
    try:
        await eventually(lambda: server.port != 0)
        assert seen == []  # the engine is still warming
        engine.gate.set()
        await starting
        assert seen == ["warm"]
        assert await health_of(server.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        engine.gate.set()
        await server.stop(grace_s=0)
