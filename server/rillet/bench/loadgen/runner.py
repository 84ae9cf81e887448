"""Drive load levels against a server: closed loop at a concurrency, or open loop at a Poisson arrival rate."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from rillet.bench.loadgen.calls import SessionUser, oneshot
from rillet.bench.loadgen.summary import summarize
from rillet.bench.loadgen.workload import Plan, Rpc
from rillet.bench.wire import Stream
from rillet.v1 import inference_service_pb2_grpc

Progress = Callable[[int], None]
"""Called with the number of requests that just completed."""

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
)

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub


@dataclass(frozen=True)
class Bound:
    """When a level stops sending: after `requests` requests, or `duration_s` seconds, whichever comes first."""

    requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("bound a level by requests, by duration, or both")


class Connections:
    """`count` channels to the target; sessions and calls are spread over them in turn (round robin)."""

    def __init__(self, target: str, count: int = 1) -> None:
        if count < 1:
            raise ValueError("connections must be at least 1")
        # Each channel gets its own subchannel pool, so that they really are separate TCP connections.
        self._channels = [
            grpc.aio.insecure_channel(target, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
            for _ in range(count)
        ]
        self._stubs = [inference_service_pb2_grpc.InferenceServiceStub(c) for c in self._channels]
        self._next = 0

    async def ready(self, timeout_s: float = 10.0) -> None:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), timeout_s) for c in self._channels))

    def pick(self) -> tuple[grpc.aio.Channel, InferenceServiceAsyncStub]:
        """The next channel in turn, with its stub."""
        index = self._next % len(self._channels)
        self._next += 1
        return self._channels[index], self._stubs[index]

    def stub(self) -> InferenceServiceAsyncStub:
        return self.pick()[1]

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))


async def closed_loop(
    connections: Connections, plan: Plan, concurrency: int, bound: Bound, progress: Progress | None = None
) -> dict[str, Any]:
    """`concurrency` users, each sending its next request as soon as the last one ended."""
    texts = plan.texts()
    records: list[Stream] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + bound.duration_s if bound.duration_s is not None else None

    def more() -> bool:
        nonlocal issued
        if bound.requests is not None and issued >= bound.requests:
            return False
        if deadline is not None and time.perf_counter() >= deadline:
            return False
        issued += 1
        return True

    async def user() -> None:
        channel, stub = connections.pick()
        session = SessionUser(channel) if plan.rpc is Rpc.SESSION else None
        try:
            while more():
                prompt = next(texts)
                done = await session.run(plan, prompt) if session is not None else [await oneshot(stub, plan, prompt)]
                records.extend(done)
                if progress is not None:
                    progress(1)
        finally:
            if session is not None:
                await session.aclose()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return summarize(records, time.perf_counter() - started, {"concurrency": concurrency})


async def open_loop(
    connections: Connections,
    plan: Plan,
    rate: float,
    bound: Bound,
    progress: Progress | None = None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Requests arriving at `rate` per second with exponential gaps (a Poisson process), whatever is in flight.

    In session mode each arrival opens its own Session call. The summary's `max_in_flight` tells how far the server
    fell behind the offered rate.
    """
    if rate <= 0:
        raise ValueError("the arrival rate must be positive")
    texts = plan.texts()
    rng = random.Random(seed)
    records: list[Stream] = []
    tasks: set[asyncio.Task[None]] = set()
    in_flight = max_in_flight = 0
    started = time.perf_counter()
    deadline = started + bound.duration_s if bound.duration_s is not None else None

    async def one(prompt: str) -> None:
        nonlocal in_flight
        channel, stub = connections.pick()
        try:
            if plan.rpc is Rpc.SESSION:
                session = SessionUser(channel)
                try:
                    records.extend(await session.run(plan, prompt))
                finally:
                    await session.aclose()
            else:
                records.append(await oneshot(stub, plan, prompt))
        finally:
            in_flight -= 1
            if progress is not None:
                progress(1)

    issued = 0
    next_at = started
    while bound.requests is None or issued < bound.requests:
        next_at += rng.expovariate(rate)
        if deadline is not None and next_at >= deadline:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        task = asyncio.create_task(one(next(texts)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        issued += 1
    await asyncio.gather(*tasks)
    summary = summarize(records, time.perf_counter() - started, {"rate": rate})
    summary["max_in_flight"] = max_in_flight
    return summary


def levels(concurrency: Sequence[int], rates: Sequence[float]) -> Iterator[tuple[str, float]]:
    """The sweep: every concurrency, then every rate."""
    for c in concurrency:
        yield "concurrency", c
    for r in rates:
        yield "rate", r
