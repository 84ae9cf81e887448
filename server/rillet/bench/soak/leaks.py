"""The soak's leak checks, from outside the server: every slot admitted at once, threads and fds, RSS over time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from rillet.bench.soak.catalog import PROMPTS, SENTENCES, duration_s
from rillet.bench.wire import Stream, drain
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, inference_service_pb2_grpc, speech_pb2


@dataclass
class ProcStats:
    """What /proc says about the server process."""

    rss_mb: float
    threads: int
    fds: int


def proc_stats(pid: int) -> ProcStats:
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    threads = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Threads:")
    )
    return ProcStats(resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, threads, len(os.listdir(f"/proc/{pid}/fd")))


def fd_kinds(pid: int | str) -> dict[str, int]:
    """Open fds of a process by kind (socket, pipe, anon_inode:[eventfd], a file...): what a leak would be."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[target.split(":[")[0] if target.startswith(("socket:", "pipe:")) else target] += 1
    return dict(kinds.most_common())


def tcp_states(port: int) -> dict[str, int]:
    """States of the TCP connections to or from `port` on loopback (from /proc/net/tcp and tcp6)."""
    names = {
        "01": "ESTABLISHED",
        "06": "TIME_WAIT",
        "08": "CLOSE_WAIT",
        "0A": "LISTEN",
        "04": "FIN_WAIT1",
        "05": "FIN_WAIT2",
    }
    states: collections.Counter[str] = collections.Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if int(local.rsplit(":", 1)[1], 16) == port or int(remote.rsplit(":", 1)[1], 16) == port:
                states[names.get(state, state)] += 1
    return dict(states)


def rss_rise(samples: list[dict[str, Any]]) -> tuple[float, float]:
    """RSS rise over `samples`: (from a least-squares line through them, their highest minus the first).

    The line is the leak check: RSS follows the requests in flight, so single samples swing by tens of MB and the
    highest-minus-first of a flat series grows with its noise; a leak tilts the whole line.
    """
    if len(samples) < 2:
        return 0.0, 0.0
    times = [s["elapsed_s"] for s in samples]
    rss = [s["rss_mb"] for s in samples]
    slope = statistics.linear_regression(times, rss).slope
    return slope * (times[-1] - times[0]), max(rss) - rss[0]


@dataclass
class SlotCheck:
    """`slots` concurrent requests of one kind: all must finish, admitted at once (server queue_duration near 0)."""

    kind: str
    slots: int
    queue_s: list[float]
    total_s: list[float]
    reasons: list[str]
    problems: list[str]

    def ok(self, max_queue_s: float) -> bool:
        return not self.problems and len(self.queue_s) == self.slots and max(self.queue_s, default=0) <= max_queue_s


async def slot_check(target: str, kind: str, slots: int, max_tokens: int) -> SlotCheck:
    """`slots` concurrent one-shot requests of `kind`, each verified; what the server says of their queueing."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)

        async def one(i: int) -> Stream:
            stream = Stream(f"{kind} slot check {i}", counts=False)
            if kind == "generate":
                params = generation_pb2.GenerateParams(
                    text=PROMPTS[i % len(PROMPTS)],
                    max_tokens=max_tokens,
                    sampling=generation_pb2.SamplingParams(temperature=0.0),
                )
                call: grpc.aio.UnaryStreamCall[Any, Any] = stub.Generate(
                    inference_service_pb2.GenerateRequest(params=params)
                )
            else:
                request = inference_service_pb2.SynthesizeRequest(
                    params=speech_pb2.SynthesizeParams(text=SENTENCES[i % len(SENTENCES)])
                )
                call = stub.Synthesize(request)
            await drain(call, stream)
            return stream

        streams = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(slots))), 600)
    problems = [f"{s.label}: {p}" for s in streams for p in s.problems]
    problems += [f"{s.label}: failed {s.error.key}" for s in streams if s.error is not None]
    finished = [s.finished for s in streams if s.finished is not None and s.error is None]
    return SlotCheck(
        kind,
        slots,
        [duration_s(f.timings.queue_duration) for f in finished],
        [duration_s(f.timings.total_duration) for f in finished],
        [common_pb2.FinishReason.Name(f.reason) for f in finished],
        problems,
    )
