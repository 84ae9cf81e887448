"""The session without a transport: the reader stops at the outbound bound, the observer hears every lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from rillet.server.config import LimitsConfig, SchedulerConfig, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.errors import RilletError
from rillet.server.observer import RequestObserver
from rillet.server.scheduler import Router
from rillet.server.session import Lifecycle, Session
from rillet.server.types import (
    AudioChunk,
    Cancel,
    Command,
    EngineRequest,
    Finished,
    GenerateSpec,
    ModelInfo,
    Output,
    Rejected,
    Start,
    TokenDelta,
)
from tests.conftest import eventually


class Recorder:
    """An Observer that writes down what it hears."""

    def __init__(self) -> None:
        self.events: dict[str, list[str]] = {}
        self.rejections: list[str] = []

    def request(self, start: Start) -> RequestObserver:
        return _RequestRecorder(self.events.setdefault(start.request_id, []))

    def rejected(self, error: RilletError) -> None:
        self.rejections.append(error.reason)


class _RequestRecorder:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def queued(self, model: ModelInfo, request: EngineRequest, source: RequestObserver | None) -> None:
        self.events.append(f"queued {model.name}")

    def admitted(self) -> None:
        self.events.append("admitted")

    def first_output(self) -> None:
        self.events.append("first_output")

    def output(self, event: TokenDelta | AudioChunk) -> None:
        if self.events[-1] != "output":
            self.events.append("output")

    def finished(self, result: Finished) -> None:
        self.events.append(f"finished {result.reason.value}")

    def cancelled(self, result: Finished) -> None:
        self.events.append(f"cancelled {result.reason.value}")

    def failed(self, error: RilletError) -> None:
        self.events.append(f"failed {error.reason}")


async def make_router(**synthetic: float) -> Router:
    router = Router([SyntheticEngine(SyntheticConfig(**synthetic))], SchedulerConfig())
    await router.start()
    return router


async def test_a_full_outbound_budget_stops_the_reader() -> None:
    limit = 2048
    read = 0

    async def cancels() -> AsyncIterator[Command]:
        nonlocal read
        for i in range(1000):
            read += 1
            yield Cancel(f"unknown-{i:04d}")

    recorder = Recorder()
    session = Session(await make_router(), LimitsConfig(max_session_buffer_bytes=limit), Lifecycle(), observer=recorder)
    outputs = session.run(cancels())
    first = await anext(outputs)  # the writer sends one rejection, and then the client reads nothing
    assert isinstance(first.payload, Rejected)
    await eventually(lambda: read > 1 and len(recorder.rejections) == read)
    for _ in range(20):
        await asyncio.sleep(0)  # give the reader every chance to go on: it must not
    held = read
    per_rejection = limit // 20  # each rejection counts well over 20 bytes
    assert held < limit // per_rejection + 2 < 1000
    rest = [output async for output in outputs]  # the client reads again: everything arrives, in order
    assert [o.request_id for o in [first, *rest]] == [f"unknown-{i:04d}" for i in range(1000)]
    assert [o.payload.message_index for o in [first, *rest] if isinstance(o.payload, Rejected)] == list(range(1000))
    assert recorder.rejections == ["UNKNOWN_REQUEST_ID"] * 1000


async def test_the_observer_hears_each_request_lifecycle_in_order() -> None:
    recorder = Recorder()
    router = await make_router(tokens_per_second=1000.0, first_output_delay_s=0.0)
    session = Session(router, LimitsConfig(), Lifecycle(), observer=recorder)
    commands: asyncio.Queue[Command | None] = asyncio.Queue()

    async def stream() -> AsyncIterator[Command]:
        while (command := await commands.get()) is not None:
            yield command

    commands.put_nowait(Start("done", GenerateSpec(prompt="a b", max_tokens=3)))
    commands.put_nowait(Start("bad", GenerateSpec(prompt="")))
    commands.put_nowait(Start("long", GenerateSpec(prompt="long", max_tokens=2000)))
    outputs: list[Output] = []
    async for output in session.run(stream()):
        outputs.append(output)
        if output.request_id == "long" and output.seq == 0:
            commands.put_nowait(Cancel("long"))
        if sum(isinstance(o.payload, Finished) for o in outputs) == 2:
            commands.put_nowait(None)
    assert recorder.events["done"] == [
        "queued synthetic-test",
        "admitted",
        "first_output",
        "output",
        "finished length",
    ]
    assert recorder.events["bad"] == ["failed EMPTY_PROMPT"]
    assert recorder.events["long"][:4] == ["queued synthetic-test", "admitted", "first_output", "output"]
    assert recorder.events["long"][-1] == "cancelled cancelled"


class Swept:
    """A Drainable that records the watchdog sweeps it gets."""

    def __init__(self) -> None:
        self.sweeps: list[float] = []

    @property
    def in_flight(self) -> int:
        return 0

    def wake(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def sweep(self, now: float) -> None:
        self.sweeps.append(now)


class Broken(Swept):
    def sweep(self, now: float) -> None:
        raise RuntimeError("a bug in one session's sweep")


async def test_one_watchdog_task_sweeps_every_open_session_and_only_open_ones() -> None:
    lifecycle = Lifecycle()
    open_one, closed_one = Swept(), Swept()
    lifecycle.register(Broken())  # swept first or not, its failure must not stop the others' sweeps
    lifecycle.register(open_one)
    lifecycle.register(closed_one)
    lifecycle.unregister(closed_one)
    watching = asyncio.create_task(lifecycle.watch(0.01))
    try:
        await eventually(lambda: len(open_one.sweeps) >= 3)
    finally:
        watching.cancel()
    assert closed_one.sweeps == []
    assert open_one.sweeps == sorted(open_one.sweeps)  # monotonic times, one per period
