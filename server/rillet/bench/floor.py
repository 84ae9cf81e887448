"""The raw grpc.aio floor: Rillet's message shapes served with no Rillet code, the reference its overhead is judged by.

A minimal InferenceService (Generate and Session only, rillet.v1 messages) that answers every generation with
`max_tokens` one-token deltas (seq 0, 1, ...) and a Finished whose usage counts them. No validation, scheduling,
coalescing or bounds: what is left is grpc.aio itself, protobuf, and an async-generator handler (the fastest
grpc.aio shape, DESIGN.md §6). `--steps-per-second` paces it like a batched engine: one shared step clock, every
running stream sends one token per step (0: each stream sends as fast as gRPC takes them). `rillet bench` (or any
rillet.v1 client) drives it exactly as it drives Rillet.

`--engine synthetic`: Generate takes its tokens from Rillet's synthetic TEST engine (its step loop, at
`--steps-per-second`) and does nothing else, so that what the engine costs and what Rillet's serving path costs
can be told apart (bench/ttft_breakdown.py): the floor with the engine, and none of Rillet's serving path.
`--engine hop`: Generate waits one event-loop turn (a future resolved by a loop callback, as a step loop wakes its
consumer) before the floor's own tokens: what handing a request to any engine that is not called inline costs, with
none of an engine's own work.

Run: .venv/bin/python bench/floor.py --port 50061 [--steps-per-second 50] [--engine synthetic|hop] [--reuse-port]
     [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.types import EngineFinished, GenerationRequest
from rillet.v1 import common_pb2, generation_pb2
from rillet.v1 import inference_service_pb2 as pb

WORDS = ("the", "river", "runs", "quietly", "past", "a", "mill", "where", "light", "falls")


class StepClock:
    """One clock for every stream: each `tick` (a step) releases every stream waiting for it."""

    def __init__(self, steps_per_second: float) -> None:
        self.interval = 1.0 / steps_per_second if steps_per_second > 0 else 0.0
        self._step: asyncio.Future[None] | None = None

    async def next_step(self) -> None:
        if not self.interval:
            return
        if self._step is None:
            self._step = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._step)

    async def run(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        at = loop.time()
        while True:
            at += self.interval
            await asyncio.sleep(max(0.0, at - loop.time()))
            step, self._step = self._step, None
            if step is not None:
                step.set_result(None)


def _delta(i: int) -> generation_pb2.TokenDelta:
    return generation_pb2.TokenDelta(text=WORDS[i % len(WORDS)] + " ", token_ids=[i % len(WORDS)])


def _finished(tokens: int) -> common_pb2.Finished:
    return common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH, usage=common_pb2.Usage(output_tokens=tokens))


class Floor:
    """The handlers; `clock` paces them, or `engine` gives Generate its tokens."""

    def __init__(self, clock: StepClock, engine: SyntheticEngine | None = None, *, hop: bool = False) -> None:
        self.clock = clock
        self.engine = engine
        self.hop = hop  # Generate waits one event-loop turn first (--engine hop)

    async def generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        if self.hop:  # a future that a loop callback resolves, as a step loop wakes its consumer
            loop = asyncio.get_running_loop()
            woken = loop.create_future()
            loop.call_soon(woken.set_result, None)
            await woken
        tokens = request.params.max_tokens or 16
        for i in range(tokens):
            await self.clock.next_step()
            yield pb.GenerateResponse(seq=i, token_delta=_delta(i))
        yield pb.GenerateResponse(seq=tokens, finished=_finished(tokens))

    async def from_engine(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        """Generate with `engine`'s tokens: one request to it, each of its events as one message, nothing checked."""
        assert self.engine is not None
        params = request.params
        job = GenerationRequest("floor", "synthetic-test", params.text, params.max_tokens or 16)
        seq = 0
        async for event in self.engine.stream(job):
            if isinstance(event, EngineFinished):
                yield pb.GenerateResponse(seq=seq, finished=_finished(event.usage.output_tokens))
                return
            yield pb.GenerateResponse(
                seq=seq, token_delta=generation_pb2.TokenDelta(text=event.text, token_ids=event.token_ids)
            )
            seq += 1

    async def session(
        self, requests: AsyncIterator[pb.SessionRequest], context: Any
    ) -> AsyncIterator[pb.SessionResponse]:
        out: asyncio.Queue[pb.SessionResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(request_id: str, tokens: int) -> None:
            for i in range(tokens):
                await self.clock.next_step()
                out.put_nowait(pb.SessionResponse(request_id=request_id, seq=i, token_delta=_delta(i)))
            out.put_nowait(pb.SessionResponse(request_id=request_id, seq=tokens, finished=_finished(tokens)))

        async def read() -> None:
            async for request in requests:
                if request.WhichOneof("kind") == "start_generate":
                    task = asyncio.create_task(one(request.request_id, request.start_generate.params.max_tokens or 16))
                    running.add(task)
                    task.add_done_callback(running.discard)
            await asyncio.gather(*running)
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def list_models(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[pb.Model(name="floor", engine="floor", is_default=True, is_test_engine=True)]
        )


def add_to_server(floor: Floor, server: grpc.aio.Server) -> None:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            floor.generate if floor.engine is None else floor.from_engine,
            pb.GenerateRequest.FromString,
            pb.GenerateResponse.SerializeToString,
        ),
        "Session": grpc.stream_stream_rpc_method_handler(
            floor.session, pb.SessionRequest.FromString, pb.SessionResponse.SerializeToString
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            floor.list_models, pb.ListModelsRequest.FromString, pb.ListModelsResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rillet.v1.InferenceService", handlers),))


async def serve(port: int, steps_per_second: float, reuse_port: bool, engine_name: str) -> None:
    clock = StepClock(steps_per_second)
    engine = None
    if engine_name == "synthetic":
        engine = SyntheticEngine(
            SyntheticConfig(tokens_per_second=steps_per_second, first_output_delay_s=0.0, slots=1024)
        )
        await engine.start()
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    add_to_server(Floor(clock, engine, hop=engine_name == "hop"), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"floor serving on 127.0.0.1:{bound}", flush=True)
    ticking = asyncio.create_task(clock.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    ticking.cancel()
    await server.stop(0)
    if engine is not None:
        await engine.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--steps-per-second", type=float, default=0.0, help="0: unpaced")
    parser.add_argument(
        "--engine",
        choices=("none", "synthetic", "hop"),
        default="none",
        help="synthetic: Generate's tokens from that engine; hop: the floor's tokens after one event-loop turn",
    )
    parser.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT (several floor processes, one port)")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the event loop (Rillet's default: uvloop)"
    )
    args = parser.parse_args()
    factory = uvloop.new_event_loop if args.loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, args.steps_per_second, args.reuse_port, args.engine))


if __name__ == "__main__":
    main()
