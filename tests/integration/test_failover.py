"""Failover through the SDK: three `rillet serve` processes (synthetic TEST engine) behind one balanced client.

The client gets the three addresses as a list, so gRPC balances (weighted_round_robin on their load reports) over the
backends whose health says SERVING. One process is then stopped (SIGTERM: it drains) or killed (SIGKILL), with 300
streams in flight. Each server names its synthetic model differently, so `ListModels` answers say which backend a
call reached. A scale-out: the client resolves one DNS name (a DNS server of the test's own, on loopback) whose
records gain a fourth replica under load; the servers' connection age makes the client re-resolve and find it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import sys
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dnslib  # type: ignore[import-untyped]
import pytest

from rillet.client import Client, Finished, FinishReason, TokenDelta, UnavailableError
from rillet.server.engine.synthetic import synthetic_text
from tests.conftest import free_port

TOKENS_PER_SECOND = 10  # per stream: 300 streams make 3,000 messages/s over the three processes
GRACE_S = 30


@dataclass
class Served:
    """One `rillet serve` process; its stderr is read on into `log` so that the pipe never fills."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stopped(self) -> int:
        status = await asyncio.wait_for(self.process.wait(), timeout=GRACE_S + 15)  # bounds a hang, times nothing
        if self.reader is not None:
            await self.reader
        return status


async def serve(name: str, port: int = 0, host: str = "127.0.0.1", **env: str) -> Served:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--host", host, "--port", str(port),
        "--text-engine", "synthetic", "--speech-engine", "none", "--drain-grace-s", str(GRACE_S),
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "RILLET_SYNTHETIC__MODEL_NAME": name,
            "RILLET_SYNTHETIC__TOKENS_PER_SECOND": str(TOKENS_PER_SECOND),
            "RILLET_SYNTHETIC__SLOTS": "256",
            **env,
        },
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    while raw := await asyncio.wait_for(process.stderr.readline(), timeout=60):
        log.append(raw.decode())
        if match := re.search(r"serving .* on [\d.]+:(\d+)", log[-1]):
            served = Served(name, process, int(match.group(1)), log, host)
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


class Dns(asyncio.DatagramProtocol):
    """A DNS server on loopback that answers A queries for one name with the addresses in `hosts` (TTL 0)."""

    NAME = "rillet.test"

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts
        self.asked = 0  # A queries for NAME answered
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dnslib.DNSRecord.parse(data)
        reply = query.reply()
        if str(query.q.qname).rstrip(".") == self.NAME and query.q.qtype == dnslib.QTYPE.A:
            self.asked += 1
            for host in self.hosts:
                reply.add_answer(dnslib.RR(query.q.qname, dnslib.QTYPE.A, rdata=dnslib.A(host), ttl=0))
        assert self._transport is not None
        self._transport.sendto(reply.pack(), addr)


AGE_S = 2.0  # the servers' max_connection_age


async def sessions_landing(client: Client, count: int) -> collections.Counter[str]:
    """Open `count` short sessions, a few at a time: which backend each landed on (its model's name)."""
    landed: collections.Counter[str] = collections.Counter()

    async def one(index: int) -> None:
        async with client.session() as session:
            stream = await session.generate(f"session {index}", max_tokens=3)
            result = await stream.collect()
            assert result.text == synthetic_text(f"session {index}", 3)
        [model] = await client.list_models()  # a call beside the session: where new calls go now
        landed[model.name] += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return landed


@pytest.mark.timeout(240)
async def test_a_fourth_replica_added_under_load_gets_new_sessions_within_the_connection_age() -> None:
    """Scale-out with no pod leaving: only the GOAWAY of an aged connection makes gRPC re-resolve and find it."""
    loop = asyncio.get_running_loop()
    dns = Dns(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    port = free_port()
    age = {"RILLET_MAX_CONNECTION_AGE_S": str(AGE_S)}
    servers = list(await asyncio.gather(*(serve(f"replica-{n}", port, f"127.0.0.{n}", **age) for n in (1, 2, 3))))
    target = f"dns://127.0.0.1:{dns_port}/{Dns.NAME}:{port}"
    try:
        # A short resolution cool-down (gRPC's default is 30 s); the age, not the resolver, decides when.
        options = [("grpc.dns_min_time_between_resolutions_ms", 100)]
        async with Client.connect(target, options=options) as client:
            await until_balanced(client, {"replica-1", "replica-2", "replica-3"})
            load = Streams(client, max_tokens=40)  # 4 s streams: running across the scale-out and the GOAWAYs
            for i in range(60):
                load.start(f"load {i}")
            await load.all_streaming()

            fourth = await serve("replica-4", port, "127.0.0.4", **age)
            servers.append(fourth)
            asked_before, added_at = dns.asked, loop.time()
            dns.hosts.append("127.0.0.4")
            # Bounded by a few connection ages (a hang bound: each wave opens 12 sessions and takes about a second).
            async with asyncio.timeout(10 * AGE_S):
                while "replica-4" not in await sessions_landing(client, 12):
                    pass
            found_after = loop.time() - added_at
            assert dns.asked > asked_before  # the client re-resolved: its aged connections were closed
            await load.all_ended()
            # Sessions and streams on the aged connections were never cut: GOAWAY ends no call.
            assert load.failed == {}
            assert load.refused_before_output == 0
            assert load.texts == {p: synthetic_text(p, 40) for p in load.texts}
            assert len(load.texts) == 60
            landed = await sessions_landing(client, 40)
            assert landed["replica-4"] > 0, (landed, found_after)
    finally:
        transport.close()
        for served in servers:
            served.process.kill()
            await served.stopped()


@pytest.mark.timeout(60)
async def test_without_a_connection_age_the_client_never_looks_again() -> None:
    """The control: no GOAWAY, no re-resolution, so the added replica gets nothing (why the age exists)."""
    loop = asyncio.get_running_loop()
    dns = Dns(["127.0.0.1", "127.0.0.2"])
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    port = free_port()
    servers = list(await asyncio.gather(*(serve(f"replica-{n}", port, f"127.0.0.{n}") for n in (1, 2, 3))))
    try:
        options = [("grpc.dns_min_time_between_resolutions_ms", 100)]
        async with Client.connect(f"dns://127.0.0.1:{dns_port}/{Dns.NAME}:{port}", options=options) as client:
            await until_balanced(client, {"replica-1", "replica-2"})
            asked = dns.asked
            dns.hosts.append("127.0.0.3")
            await asyncio.sleep(3 * AGE_S)  # what the aged test waits at most, three times over
            landed = await sessions_landing(client, 24)
            assert set(landed) == {"replica-1", "replica-2"}
            assert dns.asked == asked
    finally:
        transport.close()
        for served in servers:
            served.process.kill()
            await served.stopped()
