"""Failover through the SDK: three `rillet serve` processes (synthetic TEST engine) behind one balanced client.

The client gets the three addresses as a list, so gRPC balances round_robin over the backends whose health says
SERVING. One process is then stopped (SIGTERM: it drains) or killed (SIGKILL), with 300 streams in flight.
Each server names its synthetic model differently, so `ListModels` answers say which backend a call reached.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from rillet.client import Client, Finished, FinishReason, TokenDelta, UnavailableError
from rillet.server.engine.synthetic import synthetic_text

TOKENS_PER_SECOND = 10  # per stream: 300 streams make 3,000 messages/s over the three processes
GRACE_S = 30


@dataclass
class Served:
    """One `rillet serve` process; its stderr is read on into `log` so that the pipe never fills."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stopped(self) -> int:
        status = await asyncio.wait_for(self.process.wait(), timeout=GRACE_S + 15)  # bounds a hang, times nothing
        if self.reader is not None:
            await self.reader
        return status


async def serve(name: str, port: int = 0) -> Served:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", str(port), "--text-engine", "synthetic",
        "--speech-engine", "none", "--drain-grace-s", str(GRACE_S),
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "RILLET_SYNTHETIC__MODEL_NAME": name,
            "RILLET_SYNTHETIC__TOKENS_PER_SECOND": str(TOKENS_PER_SECOND),
            "RILLET_SYNTHETIC__SLOTS": "256",
        },
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    while raw := await asyncio.wait_for(process.stderr.readline(), timeout=60):
        log.append(raw.decode())
        if match := re.search(r"serving .* on [\d.]+:(\d+)", log[-1]):
            served = Served(name, process, int(match.group(1)), log)
            served.reader = asyncio.create_task(_read_on(process.stderr, log))
            return served
    raise AssertionError(f"{name} never said where it serves:\n{''.join(log)}")


async def _read_on(stream: asyncio.StreamReader, log: list[str]) -> None:
    while raw := await stream.readline():
        log.append(raw.decode())


@pytest.fixture
async def three() -> AsyncIterator[list[Served]]:
    servers = list(await asyncio.gather(*(serve(f"synthetic-test-{i}") for i in range(3))))
    yield servers
    for served in servers:
        if served.process.returncode is None:
            served.process.kill()
        await served.stopped()


async def backends_answering(client: Client, calls: int = 30) -> set[str]:
    """The backends that answered `calls` ListModels calls in a row (round_robin visits each READY one in turn)."""
    names: set[str] = set()
    for _ in range(calls):
        names.update(m.name for m in await client.list_models())
    return names


async def until_balanced(client: Client, expected: set[str]) -> None:
    """Wait (bounded) until round_robin reaches exactly `expected`: every backend connected and healthy."""
    async with asyncio.timeout(30):
        while await backends_answering(client) != expected:
            pass


class Streams:
    """Starts one-shot Generate streams and records how each one ends."""

    def __init__(self, client: Client, max_tokens: int) -> None:
        self.client = client
        self.max_tokens = max_tokens
        self.tasks: list[asyncio.Task[None]] = []
        self.streaming: list[asyncio.Event] = []
        self.texts: dict[str, str] = {}  # prompt -> the text it received, for streams that finished
        self.failed: dict[str, tuple[str, bool]] = {}  # prompt -> (text received, whether any stream had finished)
        self.refused_before_output = 0  # UNAVAILABLE before any output, after the SDK's own retries

    def start(self, prompt: str) -> None:
        event = asyncio.Event()
        self.streaming.append(event)
        self.tasks.append(asyncio.create_task(self._run(prompt, event)))

    async def _run(self, prompt: str, streaming: asyncio.Event) -> None:
        for _ in range(5):
            received: list[str] = []
            finished: Finished | None = None
            try:
                async for event in self.client.generate(prompt, max_tokens=self.max_tokens):
                    if isinstance(event, TokenDelta):
                        received.append(event.text)
                        streaming.set()
                    else:
                        finished = event
            except UnavailableError:
                if received:  # cut off after output: never replayed, the caller sees what it got
                    self.failed[prompt] = ("".join(received), bool(self.texts))
                    streaming.set()
                    return
                self.refused_before_output += 1
                continue  # nothing was output: safe to send again, and the balancer picks a serving backend
            assert finished is not None
            assert finished.reason is FinishReason.LENGTH
            assert prompt not in self.texts, "a request finished twice"
            self.texts[prompt] = "".join(received)
            return
        raise AssertionError(f"{prompt!r} was refused five times")

    async def all_streaming(self) -> None:
        async with asyncio.timeout(60):
            await asyncio.gather(*(e.wait() for e in self.streaming))

    async def all_ended(self) -> None:
        async with asyncio.timeout(120):  # bounds a hang; the streams themselves take seconds
            await asyncio.gather(*self.tasks)


@pytest.mark.timeout(240)
async def test_sigterm_drains_one_of_three_and_every_request_completes_exactly_once(three: list[Served]) -> None:
    drained, *survivors = three
    async with Client.connect([s.address for s in three]) as client:
        await until_balanced(client, {s.name for s in three})
        streams = Streams(client, max_tokens=20)  # 2 s per stream: far inside the grace
        for i in range(300):
            streams.start(f"first wave {i}")
        await streams.all_streaming()  # 300 in flight, about 100 on each process

        drained.process.send_signal(signal.SIGTERM)
        for i in range(150):  # and more keep coming while it drains: they must land elsewhere
            streams.start(f"second wave {i}")
        await streams.all_ended()

        assert streams.failed == {}
        assert streams.texts == {p: synthetic_text(p, 20) for p in streams.texts}  # nothing lost, cut or doubled
        assert len(streams.texts) == 450
        assert await drained.stopped() == 0
        # New calls reach only the survivors.
        assert await backends_answering(client) == {s.name for s in survivors}
        assert (await client.generate("after", max_tokens=3).collect()).text == synthetic_text("after", 3)

    log = "".join(drained.log)
    in_flight = re.search(r"draining: (\d+) requests in flight", log)
    assert in_flight is not None
    assert int(in_flight.group(1)) == 100  # round_robin over three healthy backends: a third of the 300 each
    assert "grace period over" not in log  # every request it held finished within the grace


@pytest.mark.timeout(240)
async def test_sigkill_fails_the_dead_backends_streams_at_once_and_the_rest_go_on(three: list[Served]) -> None:
    killed, *survivors = three
    async with Client.connect([s.address for s in three]) as client:
        await until_balanced(client, {s.name for s in three})
        streams = Streams(client, max_tokens=100)  # 10 s per stream: still running when the failures are in
        for i in range(300):
            streams.start(f"stream {i}")
        await streams.all_streaming()

        killed.process.kill()
        await streams.all_ended()

        assert len(streams.failed) == 100  # the killed process's third of the streams, and only those
        assert len(streams.failed) + len(streams.texts) == 300
        for prompt, (text, after_a_finish) in streams.failed.items():
            assert not after_a_finish  # ended at once: before any surviving stream could finish
            assert text
            assert synthetic_text(prompt, 100).startswith(text)
        assert streams.texts == {p: synthetic_text(p, 100) for p in streams.texts}
        assert await killed.stopped() == -signal.SIGKILL

        # New calls go to the survivors, without errors.
        assert await backends_answering(client) == {s.name for s in survivors}
        more = Streams(client, max_tokens=3)
        for i in range(60):
            more.start(f"after {i}")
        await more.all_ended()
        assert more.failed == {}
        assert more.refused_before_output == 0
        assert more.texts == {p: synthetic_text(p, 3) for p in more.texts}

        # The client reconnects by itself once something serves at the address again.
        restarted = await serve("synthetic-test-restarted", port=killed.port)
        three.append(restarted)  # stopped by the fixture
        await until_balanced(client, {restarted.name, *(s.name for s in survivors)})
