"""Soak: `rillet serve` on its real engines under hundreds of concurrent clients for minutes; every stream verified."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import contextvars
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from rich.console import Console

from rillet.client import (
    Client,
    Finished,
    FinishReason,
    ProtocolError,
    RequestStream,
    ResourceExhaustedError,
    RilletError,
)
from rillet.server.config import LlamaCppConfig, PiperConfig
from rillet.server.engine.llamacpp import resolve_slots
from rillet.v1 import (
    common_pb2,
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    speech_pb2,
)

ABOUT = """\
Starts `rillet serve` with its default, real engines (llamacpp: Gemma 3 270M; piper: the bundled voice) on a
loopback port and runs `--sessions` concurrent clients for `--duration-s`. Each client loops over scenarios:
one-shot Generate and Synthesize, Sessions mixing generations, syntheses, streaming-input syntheses (AppendText,
EndInput) and generate→speak chains (text_from_request_id), client cancels at random points, abrupt disconnects
(the channel closed mid-stream), bad input (undecodable frames, over-long ids, NUL, out-of-range sampling, unknown
names...), and the SDK's own one-shot and chained calls. RESOURCE_EXHAUSTED with a retry hint is expected: the
client waits retry_after and retries.

Every stream is verified on raw frames (rillet.v1 stubs): seq 0..n without a gap, exactly one terminal message and
nothing after it; cancelled requests end FINISH_REASON_CANCELLED (or completed before the cancel landed); every bad
input gets its expected code and reason in-band; UNKNOWN and INTERNAL are never allowed. Afterwards, with every
client gone, leaks are checked from outside: `slots` concurrent generations and syntheses must all be admitted at
once (server-reported queue_duration near 0), and the server's threads and open fds must be back near baseline.
Server RSS is sampled every --sample-every-s; piper returns its onnxruntime memory after each segment
(--piper-release-memory, on by default), so RSS follows demand and a leak shows as growth over the second half
(with onnxruntime's arena kept, RSS climbs in steps to the most ever rendered at once, for most of an hour).
Writes bench/results/soak_<date>.md and .json.
Run: .venv/bin/python bench/soak.py [--duration-s 900] [--sessions 200]
"""

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
SERVICE = "/rillet.v1.InferenceService/"
CODES = {code.value[0]: code for code in grpc.StatusCode}
OK, RE = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
NEVER = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
ECHO_CHARS = 64  # the server clips a request id it echoes past the id limit to this many characters (errors.clip)

PROMPTS = (
    "The old lighthouse keeper climbed the stairs every evening, and on the last night of the year he",
    "The history of the printing press begins in the fifteenth century, when",
    "To make a simple loaf of bread, you need flour, water, salt and yeast. First,",
    "The city council met on Tuesday to discuss the new bicycle lanes. Several residents argued that",
    "When the spacecraft entered the orbit of the red planet, the crew noticed",
    "My grandmother used to tell us a story about a fox and a crow. The fox",
    "Rivers shape the land around them in many ways. Over thousands of years,",
    "The detective looked at the muddy footprints by the window and said",
)
LONG_PROMPT = " ".join(PROMPTS) * 4  # ~400 tokens: a prefill long enough for some cancels to land in it
CHATS = ("Name three colours.", "Say hello in French.", "What is two plus two?", "Give me a word that rhymes with cat.")
SENTENCES = (
    "The train leaves at noon.",
    "Rivers shape the land around them.",
    "Please close the window before you go.",
    "The detective looked at the muddy footprints.",
    "Bread needs flour, water, salt and yeast.",
    "The crew noticed a light on the red planet.",
    "Tomorrow will be sunny, with a light breeze.",
)
UNDECODABLE = (
    b"\x0a\x02\xff\xfe",  # field 1 (a string in every request type here, or a message) holding invalid UTF-8
    b"\x0a\x05ab",  # a length-delimited field cut short
    b"\x08\xff",  # a truncated varint
    b"\x0c",  # a stray end-group tag
    b"\x4b" * 200 + b"\x4c" * 200,  # groups nested past protobuf's recursion limit
)


# ---- statuses ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """A canonical code with the ErrorInfo reason and RetryInfo delay the server attached."""

    code: grpc.StatusCode
    reason: str = ""
    retry_after: float | None = None
    message: str = ""

    @property
    def key(self) -> str:
        return f"{self.code.name} {self.reason}".strip()


def status_of(message: status_pb2.Status) -> Status:
    reason, retry_after = "", None
    for detail in message.details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return Status(CODES.get(message.code, grpc.StatusCode.UNKNOWN), reason, retry_after, message.message[:200])


def status_of_call(error: grpc.aio.AioRpcError) -> Status:
    """The status a failed call carries: the google.rpc.Status in its trailers when there is one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_of(status_pb2.Status.FromString(value))
    return Status(error.code(), "", None, (error.details() or "")[:200])


def as_is(data: bytes) -> bytes:
    """The serializer of raw frames: the bytes are sent as they are, however broken."""
    return data


def duration_s(message: duration_pb2.Duration) -> float:
    return message.ToTimedelta().total_seconds()


def echoed(request_id: str, limit: int) -> str:
    """The request id the server puts on a reply about `request_id` (clipped past the id limit)."""
    return request_id if len(request_id) <= limit else request_id[:ECHO_CHARS] + "…"


def frame(request_id: str, **kind: Message) -> bytes:
    return inference_service_pb2.SessionRequest(request_id=request_id, **kind).SerializeToString()  # type: ignore[arg-type]


WATCHED: contextvars.ContextVar[list[Check]] = contextvars.ContextVar("watched")
"""The streams the current scenario opened (every task it starts shares the list)."""


# ---- the tally -----------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One request's stream, checked message by message: seq 0, 1, 2, ... without a gap, one terminal, last."""

    label: str
    next_seq: int = 0
    terminal: str | None = None
    outputs: int = 0
    problems: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    last_at: float | None = None  # when the last message arrived
    accounted: bool = False  # Tally.verified has judged it

    def __post_init__(self) -> None:
        watched = WATCHED.get(None)
        if watched is not None:
            watched.append(self)  # the scenario's streams, described if it hangs

    def describe(self, now: float) -> str:
        last = "no message yet" if self.last_at is None else f"last message {now - self.last_at:.0f}s ago"
        age = now - self.started_at
        return f"{self.label}: {self.outputs} outputs, next seq {self.next_seq}, started {age:.0f}s ago, {last}"

    def feed(self, seq: int, kind: str | None) -> None:
        self.last_at = time.monotonic()
        if self.terminal is not None:
            self.problems.append(f"{kind} (seq {seq}) after the terminal {self.terminal}")
        elif seq != self.next_seq:
            self.problems.append(f"seq {seq} where {self.next_seq} was due")
        self.next_seq = seq + 1
        if kind in ("finished", "error"):
            self.terminal = kind
        elif kind in ("token_delta", "audio_chunk"):
            self.outputs += 1
        else:
            self.problems.append(f"unexpected message kind {kind!r}")


class Tally:
    """Everything the soak counts; one instance, updated from every client task."""

    def __init__(self) -> None:
        self.served: collections.Counter[str] = collections.Counter()  # completed requests by kind
        self.cancelled: collections.Counter[str] = collections.Counter()  # by kind and where the cancel landed
        self.events: collections.Counter[str] = collections.Counter()  # scenarios, disconnects, retries, races
        self.bad_input: collections.Counter[str] = collections.Counter()  # by kind, each got its expected status
        self.codes: collections.Counter[str] = collections.Counter()  # every non-OK status seen, by code and reason
        self.streams_verified = 0
        self.lost: list[str] = []
        self.violations: list[str] = []
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.open_calls = 0
        self.open_calls_samples: list[int] = []

    def code(self, status: Status) -> None:
        self.codes[status.key] += 1

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def verified(self, check: Check, *, complete: bool = True) -> None:
        """Account one stream; `complete` when it must have ended with its terminal (not abandoned mid-stream)."""
        self.streams_verified += 1
        check.accounted = True
        if check.problems:
            self.lost.append(f"{check.label}: {'; '.join(check.problems[:3])}")
        elif complete and check.terminal is None:
            self.lost.append(f"{check.label}: the stream ended without a terminal message")

    def calls(self, delta: int) -> None:
        self.open_calls += delta


# ---- the server process --------------------------------------------------------------------------------------


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


def connect(target: str) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own (gRPC shares one per target by default): closing it disconnects."""
    return grpc.aio.insecure_channel(target, options=(("grpc.use_local_subchannel_pool", 1),))


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- raw sessions --------------------------------------------------------------------------------------------


@dataclass
class Tracked:
    """A request started on a raw session: its check and the messages the reader routed to it."""

    request_id: str
    check: Check
    messages: asyncio.Queue[inference_service_pb2.SessionResponse | None] = field(default_factory=asyncio.Queue)
    sent_at: float = 0.0
    first_output_at: float | None = None
    has_output: asyncio.Event = field(default_factory=asyncio.Event)
    terminal_order: int | None = None  # the session's count of terminals when this one arrived
    follow_ups: int = 0  # Cancel, AppendText or EndInput sent after the start (a late one may be rejected NOT_FOUND)


class RawSession:
    """One Session call on raw frames; a reader routes each response to the request it belongs to.

    `rejected` replies are matched against the rejections the client expects (by echoed id, code and reason); any
    other one is a violation.
    """

    def __init__(self, channel: grpc.aio.Channel, tally: Tally, label: str, id_limit: int) -> None:
        method = channel.stream_stream(
            SERVICE + "Session",
            request_serializer=as_is,
            response_deserializer=inference_service_pb2.SessionResponse.FromString,
        )
        self.call: grpc.aio.StreamStreamCall[bytes, inference_service_pb2.SessionResponse] = method()
        self.tally = tally
        self.label = label
        self.id_limit = id_limit
        self.streams: dict[str, Tracked] = {}
        self.expected: list[tuple[str, frozenset[grpc.StatusCode], str]] = []  # (echoed id, codes, reason)
        self.final: Status | None = None
        self.first_output = asyncio.Event()
        self._lock = asyncio.Lock()
        self._half_closed = False
        self._terminals = 0
        self.disconnecting = False  # set before the client closes the channel on purpose
        tally.calls(+1)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._route(response)
            self.final = Status(OK)
        except grpc.aio.AioRpcError as error:
            self.final = status_of_call(error)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self.final = Status(grpc.StatusCode.CANCELLED)  # our own channel close
        finally:
            self.tally.calls(-1)
            for tracked in self.streams.values():
                tracked.messages.put_nowait(None)

    def _route(self, response: inference_service_pb2.SessionResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "rejected":
            self._rejected(response.request_id, response.seq, status_of(response.rejected))
            return
        tracked = self.streams.get(response.request_id)
        if tracked is None:
            self.tally.violation(f"{self.label}: {kind} for {response.request_id[:80]!r}, a request never started")
            return
        if tracked.check.accounted:  # a message after the terminal of a stream already verified: lost here
            self.tally.lost.append(f"{tracked.check.label}: {kind} (seq {response.seq}) after the terminal")
        tracked.check.feed(response.seq, kind)
        if kind in ("finished", "error"):
            self._terminals += 1
            tracked.terminal_order = self._terminals
        if kind in ("token_delta", "audio_chunk"):
            if tracked.first_output_at is None:
                tracked.first_output_at = time.perf_counter()
                tracked.has_output.set()
            self.first_output.set()
        tracked.messages.put_nowait(response)

    def _rejected(self, request_id: str, seq: int, status: Status) -> None:
        self.tally.code(status)
        if seq != 0:
            self.tally.violation(f"{self.label}: rejected with seq {seq} (always 0)")
        for i, (rid, codes, reason) in enumerate(self.expected):
            if rid == request_id and status.code in codes and (not reason or reason == status.reason):
                del self.expected[i]
                return
        tracked = self.streams.get(request_id)
        if (
            tracked is not None
            and tracked.check.terminal is not None
            and tracked.follow_ups
            and status.code is NOT_FOUND
        ):
            # The request had ended (a cancel landed late, or it was refused while input was still being sent): what
            # the client expected for its later messages no longer applies.
            self.expected = [e for e in self.expected if e[0] != request_id]
            self.tally.events["follow-up raced the request's end (rejected NOT_FOUND)"] += 1
            return
        self.tally.violation(
            f"{self.label}: unexpected rejected {status.key} for {request_id[:80]!r}: {status.message}"
        )

    async def send(self, data: bytes) -> bool:
        """Write one frame; False when the call is over (its status says why)."""
        if self._half_closed or self._reader.done():
            return False
        async with self._lock:
            try:
                await self.call.write(data)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                return False
        return True

    def track(self, request_id: str, label: str) -> Tracked:
        tracked = Tracked(request_id, Check(f"{self.label} {label} {request_id}"), sent_at=time.perf_counter())
        self.streams[request_id] = tracked
        if self._reader.done():
            tracked.messages.put_nowait(None)
        return tracked

    def expect_rejection(self, request_id: str, codes: Iterable[grpc.StatusCode], reason: str = "") -> None:
        self.expected.append((echoed(request_id, self.id_limit), frozenset(codes), reason))

    async def follow_up(self, tracked: Tracked, **kind: Message) -> bool:
        tracked.follow_ups += 1
        return await self.send(frame(tracked.request_id, **kind))

    async def half_close(self) -> None:
        async with self._lock:
            if not self._half_closed and not self._reader.done():
                self._half_closed = True
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    await self.call.done_writing()

    async def ended(self) -> Status:
        await self._reader
        assert self.final is not None
        return self.final

    def abort(self) -> None:
        self.call.cancel()


# ---- scenarios -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelAt:
    """When the client cancels: `delay_s` after the start (0: in the same burst), or after `outputs` outputs."""

    delay_s: float | None = None
    outputs: int | None = None

    @staticmethod
    def draw(rng: random.Random, chance: float) -> CancelAt | None:
        if rng.random() >= chance:
            return None
        return rng.choice(
            (CancelAt(delay_s=0.0), CancelAt(delay_s=rng.uniform(0.02, 1.5)), CancelAt(outputs=rng.randint(1, 4)))
        )


@dataclass
class Outcome:
    """How one request ended, as its stream said."""

    tracked: Tracked
    finished: common_pb2.Finished | None = None
    error: Status | None = None
    cancel_sent: bool = False
    call_ended: bool = False  # the call ended before the terminal: lost, unless the client disconnected on purpose
    abandoned: bool = False  # the client closed the channel: no terminal was due


class Soak:
    """The clients, the scenarios they loop over, and their verification."""

    def __init__(self, opts: argparse.Namespace, target: str, tally: Tally, *, chat: bool) -> None:
        self.opts = opts
        self.chat = chat  # the default model has a chat template: chat prompts are ordinary requests, else bad input
        self.target = target
        self.tally = tally
        self.deadline = 0.0
        self.id_limit = opts.request_id_limit
        for data in UNDECODABLE:  # each must really be undecodable for every request type, or the soak is wrong
            for message_type in (
                inference_service_pb2.SessionRequest,
                inference_service_pb2.GenerateRequest,
                inference_service_pb2.SynthesizeRequest,
            ):
                try:
                    message_type.FromString(data)
                except DecodeError:
                    continue
                raise AssertionError(f"{data[:8]!r} decodes as {message_type.__name__}")

    # -- the client loop --

    async def client(self, index: int, channel: grpc.aio.Channel) -> None:
        rng = random.Random(self.opts.seed * 100_003 + index)
        scenarios: list[tuple[Callable[[random.Random, grpc.aio.Channel], Coroutine[Any, Any, None]], float]] = [
            (self.session_scenario, 0.45),
            (self.oneshot_generate, 0.15),
            (self.oneshot_synthesize, 0.1),
            (self.sdk_scenario, 0.15),
            (self.bad_oneshot, 0.05),
            (self.disconnect_scenario, 0.1),
        ]
        await asyncio.sleep(rng.uniform(0, self.opts.think_s))  # spread the first wave
        while time.monotonic() < self.deadline:
            scenario = rng.choices([s for s, _ in scenarios], [w for _, w in scenarios])[0]
            self.tally.events[f"scenario {scenario.__name__}"] += 1
            watched: list[Check] = []
            WATCHED.set(watched)  # before the task: it copies this context, so its streams land in `watched`
            began = time.monotonic()
            task = asyncio.create_task(scenario(rng, channel))
            while not task.done():
                await asyncio.wait({task}, timeout=5.0)
                now = time.monotonic()
                progress = max((c.last_at or c.started_at for c in watched), default=began)
                if task.done() or (now - progress < self.opts.hang_s and now - began < self.opts.scenario_timeout_s):
                    continue
                open_streams = [c.describe(now) for c in watched if c.terminal is None] or ["none open"]
                self.tally.lost.append(
                    f"client {index}: {scenario.__name__} hung: no message for {now - progress:.0f}s, "
                    f"{now - began:.0f}s in ({len(watched)} streams opened); open: {' | '.join(open_streams)}"
                )
                task.cancel()
                break
            try:
                await task
            except asyncio.CancelledError:
                pass  # hung, and recorded above
            except Exception as error:  # a bug in the soak or an unforeseen reply: recorded, the client goes on
                self.tally.violation(
                    f"client {index}: {scenario.__name__} raised {type(error).__name__}: {error}\n"
                    + "".join(traceback.format_exception(error)[-3:])
                )
            await asyncio.sleep(rng.uniform(0, self.opts.think_s))

    async def backoff(self, rng: random.Random, status: Status, where: str, attempt: int) -> bool:
        """After RESOURCE_EXHAUSTED: wait its retry hint (doubled per attempt, up to 8x, jittered).

        False when the retry should not happen (the soak is over).
        """
        self.tally.code(status)
        if status.retry_after is None:
            self.tally.violation(f"{where}: RESOURCE_EXHAUSTED without a RetryInfo hint ({status.reason})")
            return False
        if time.monotonic() >= self.deadline:
            self.tally.events["RESOURCE_EXHAUSTED after the soak's end: not retried"] += 1
            return False
        if attempt > self.opts.max_attempts:
            self.tally.events[f"RESOURCE_EXHAUSTED {self.opts.max_attempts} times: given up"] += 1
            return False
        self.tally.events["RESOURCE_EXHAUSTED: retried after retry_after"] += 1
        await asyncio.sleep(status.retry_after * min(2 ** (attempt - 1), 8) * rng.uniform(1.0, 1.5))
        return True

    # -- request bodies --

    def generate_params(self, rng: random.Random) -> generation_pb2.GenerateParams:
        max_tokens = rng.randint(self.opts.min_tokens, self.opts.max_tokens)
        temperature = rng.choice((0.0, 0.7, 1.0))
        sampling = generation_pb2.SamplingParams(temperature=temperature, seed=rng.randrange(2**32))
        if self.chat and rng.random() < 0.2:
            chat = generation_pb2.ChatPrompt(
                messages=[generation_pb2.ChatMessage(role="user", content=rng.choice(CHATS))]
            )
            return generation_pb2.GenerateParams(chat=chat, max_tokens=max_tokens, sampling=sampling)
        prompt = LONG_PROMPT if rng.random() < 0.05 else rng.choice(PROMPTS)
        return generation_pb2.GenerateParams(text=prompt, max_tokens=max_tokens, sampling=sampling)

    @staticmethod
    def speech_text(rng: random.Random) -> str:
        return " ".join(rng.sample(SENTENCES, rng.randint(1, 2)))

    # -- one-shot RPCs on the generated stubs --

    async def oneshot_generate(
        self, rng: random.Random, channel: grpc.aio.Channel, *, disconnect: bool = False
    ) -> None:
        """A one-shot Generate on the generated stub; with `disconnect`, its channel is closed mid-stream."""
        request = inference_service_pb2.GenerateRequest(params=self.generate_params(rng))
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        await self.oneshot(rng, "generate (one-shot)", lambda: stub.Generate(request), channel, disconnect)

    async def oneshot_synthesize(
        self, rng: random.Random, channel: grpc.aio.Channel, *, disconnect: bool = False
    ) -> None:
        """A one-shot Synthesize on the generated stub; with `disconnect`, its channel is closed mid-stream."""
        params = speech_pb2.SynthesizeParams(text=self.speech_text(rng))
        request = inference_service_pb2.SynthesizeRequest(params=params)
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        await self.oneshot(rng, "synthesize (one-shot)", lambda: stub.Synthesize(request), channel, disconnect)

    async def oneshot(
        self,
        rng: random.Random,
        label: str,
        start: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        channel: grpc.aio.Channel,
        disconnect: bool,
    ) -> None:
        """Run a one-shot call to its end, retrying RESOURCE_EXHAUSTED; what arrived is verified either way.

        Some calls are cancelled at a random point; with `disconnect`, the channel is closed after a few outputs.
        """
        cancel = CancelAt(outputs=rng.randint(1, 3)) if disconnect else CancelAt.draw(rng, self.opts.cancel_chance)
        close = channel.close if disconnect else None
        output = "token_delta" if label.startswith("generate") else "audio_chunk"
        metric = "TTFT" if output == "token_delta" else "TTFA"
        closing: list[asyncio.Task[None]] = []  # a channel close runs as a task: do_cancel is a plain callback
        attempt = 0
        while True:
            check = Check(label)
            sent = time.perf_counter()
            call = start()
            self.tally.calls(+1)
            timer: asyncio.TimerHandle | None = None
            cancelled = False
            first_at: float | None = None

            def do_cancel(call: grpc.aio.UnaryStreamCall[Any, Any] = call) -> None:
                nonlocal cancelled
                cancelled = True
                if close is None:
                    call.cancel()
                else:
                    closing.append(asyncio.create_task(close()))

            if cancel is not None and cancel.delay_s is not None:
                timer = asyncio.get_running_loop().call_later(cancel.delay_s, do_cancel)
            finished: common_pb2.Finished | None = None
            failure: Status | None = None
            try:
                async for response in call:
                    kind = response.WhichOneof("kind")
                    check.feed(response.seq, kind)
                    if kind == output and check.outputs == 1:
                        first_at = time.perf_counter()
                    if kind == "finished":
                        finished = response.finished
                    elif cancel is not None and cancel.outputs is not None and check.outputs >= cancel.outputs:
                        do_cancel()
                        break
            except grpc.aio.AioRpcError as error:
                failure = status_of_call(error)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                failure = Status(grpc.StatusCode.CANCELLED)
            finally:
                self.tally.calls(-1)
                if timer is not None:
                    timer.cancel()
                await asyncio.gather(*closing)
            if cancelled and finished is None and (failure is None or failure.code is grpc.StatusCode.CANCELLED):
                # The client left: the server's terminal is not for us to see; what arrived must still be in order.
                self.tally.verified(check, complete=False)
                point = "before output" if check.outputs == 0 else "mid-stream"
                how = "disconnect" if close is not None else "cancel"
                self.tally.cancelled[f"{label}: {how} {point}"] += 1
                return
            if failure is not None:
                if failure.code is RE and check.next_seq == 0:
                    attempt += 1
                    if not cancelled and await self.backoff(rng, failure, label, attempt):
                        continue
                    return
                self.tally.code(failure)
                self.tally.violation(f"{label}: ended {failure.key}: {failure.message}")
                self.tally.verified(check, complete=False)
                return
            self.tally.verified(check)
            if finished is not None:
                self.count_finished(label, finished, cancel_sent=False, outputs=check.outputs, metric=metric)
                if first_at is not None:
                    self.tally.latency[f"{metric} client, {label}"].append(first_at - sent)
            return

    def count_finished(
        self, label: str, finished: common_pb2.Finished, *, cancel_sent: bool, outputs: int, metric: str
    ) -> None:
        reason = finished.reason
        timings = finished.timings
        if reason == common_pb2.FINISH_REASON_CANCELLED:
            if not cancel_sent:
                self.tally.violation(f"{label}: FINISH_REASON_CANCELLED without a cancel")
                return
            queue, total = duration_s(timings.queue_duration), duration_s(timings.total_duration)
            if outputs:
                where = "decoding" if metric == "TTFT" else "synthesizing"
            elif total - queue < 1e-3:
                where = "queued"
            else:
                where = "admitted, prefilling" if metric == "TTFT" else "admitted, before first audio"
            self.tally.cancelled[f"{label}: {where}"] += 1
            return
        if reason == common_pb2.FINISH_REASON_UNSPECIFIED:
            self.tally.violation(f"{label}: finished without a reason")
            return
        self.tally.served[label] += 1
        if cancel_sent:
            self.tally.events["cancel landed after the request completed"] += 1
        self.tally.latency[f"queue server, {label}"].append(duration_s(timings.queue_duration))
        if timings.HasField("time_to_first_output"):
            self.tally.latency[f"{metric} server, {label}"].append(duration_s(timings.time_to_first_output))

    async def bad_oneshot(self, rng: random.Random, channel: grpc.aio.Channel) -> None:
        """One bad request on a one-shot RPC: the call must end with the expected code and reason."""
        cases: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
            ("Generate undecodable", "Generate", rng.choice(UNDECODABLE), INVALID, "UNDECODABLE_MESSAGE"),
            ("Synthesize undecodable", "Synthesize", rng.choice(UNDECODABLE), INVALID, "UNDECODABLE_MESSAGE"),
            (
                "Generate unknown model",
                "Generate",
                self.gen_request(model="no-such-model"),
                NOT_FOUND,
                "MODEL_NOT_FOUND",
            ),
            ("Generate model name too long", "Generate", self.gen_request(model="m" * 5000), INVALID, "NAME_TOO_LONG"),
            ("Generate temperature 7", "Generate", self.gen_request(temperature=7.0), INVALID, "SAMPLING_OUT_OF_RANGE"),
            ("Generate top_p 0", "Generate", self.gen_request(top_p=0.0), INVALID, "SAMPLING_OUT_OF_RANGE"),
            ("Generate max_tokens 0", "Generate", self.gen_request(max_tokens=0), INVALID, "MAX_TOKENS_OUT_OF_RANGE"),
            ("Generate empty prompt", "Generate", self.gen_request(text=""), INVALID, "EMPTY_PROMPT"),
            ("Synthesize NUL", "Synthesize", self.synth_request("Hello\0world."), INVALID, "NUL_CHARACTER"),
            ("Synthesize empty text", "Synthesize", self.synth_request(" "), INVALID, "EMPTY_TEXT"),
            (
                "Synthesize unknown voice",
                "Synthesize",
                self.synth_request("Hi.", voice="nobody"),
                NOT_FOUND,
                "MODEL_NOT_FOUND",
            ),
        ]
        label, method, request, code, reason = rng.choice(cases)
        call: grpc.aio.UnaryStreamCall[bytes, bytes] = channel.unary_stream(SERVICE + method, request_serializer=as_is)(
            request
        )
        self.tally.calls(+1)
        try:
            async for _ in call:
                self.tally.violation(f"bad one-shot {label}: got a message")
            self.tally.violation(f"bad one-shot {label}: ended OK")
            return
        except grpc.aio.AioRpcError as error:
            status = status_of_call(error)
        finally:
            self.tally.calls(-1)
        self.expect(f"bad one-shot {label}", status, {code}, reason)

    def expect(self, label: str, status: Status, codes: set[grpc.StatusCode], reason: str) -> None:
        self.tally.code(status)
        if status.code in codes and status.reason == reason:
            self.tally.bad_input[label] += 1
        else:
            self.tally.violation(f"{label}: got {status.key} ({status.message}), expected {reason}")

    def gen_request(
        self, *, model: str = "", text: str = "Hello", max_tokens: int = 4, temperature: float = 0.0, top_p: float = 1.0
    ) -> bytes:
        params = generation_pb2.GenerateParams(
            model=model,
            max_tokens=max_tokens,
            sampling=generation_pb2.SamplingParams(temperature=temperature, top_p=top_p),
        )
        if text:
            params.text = text
        return inference_service_pb2.GenerateRequest(params=params).SerializeToString()

    @staticmethod
    def synth_request(text: str, voice: str = "") -> bytes:
        return inference_service_pb2.SynthesizeRequest(
            params=speech_pb2.SynthesizeParams(text=text, voice=voice)
        ).SerializeToString()

    # -- sessions on raw frames --

    async def session_scenario(self, rng: random.Random, channel: grpc.aio.Channel) -> None:
        await self.session(rng, channel, disconnect=None)

    async def disconnect_scenario(self, rng: random.Random, channel: grpc.aio.Channel) -> None:
        """On a channel of its own: a one-shot call or a session whose channel is closed mid-stream."""
        own = connect(self.target)
        try:
            if rng.random() < 0.3:
                oneshot = self.oneshot_generate if rng.random() < 0.5 else self.oneshot_synthesize
                await oneshot(rng, own, disconnect=True)
            else:
                await self.session(rng, own, disconnect=own)
        finally:
            await own.close()

    async def session(self, rng: random.Random, channel: grpc.aio.Channel, disconnect: grpc.aio.Channel | None) -> None:
        """A Session with 1-4 requests of mixed kinds, some cancelled, some bad frames among them.

        It ends by half-close (early, while requests run, or once they are done) or, with `disconnect`, by closing
        the channel mid-stream.
        """
        ids = itertools.count()
        label = "disconnected session" if disconnect else "session"
        session = RawSession(channel, self.tally, label, self.id_limit)
        early_close = disconnect is None and rng.random() < 0.3
        cancel_chance = 0.0 if early_close else self.opts.cancel_chance
        sent_all: list[asyncio.Event] = []
        jobs: list[asyncio.Task[None]] = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choices(("generate", "synthesize", "streaming", "chain"), (0.35, 0.2, 0.2, 0.25))[0]
            event = asyncio.Event()
            sent_all.append(event)
            plan = self.session_request(rng, session, kind, ids, CancelAt.draw(rng, cancel_chance), early_close, event)
            jobs.append(asyncio.create_task(plan))
        for _ in range(rng.randint(1, 3) if rng.random() < self.opts.bad_chance else 0):
            event = asyncio.Event()
            sent_all.append(event)
            jobs.append(asyncio.create_task(self.session_bad(rng, session, ids, event)))
        try:
            if disconnect is not None:
                try:
                    await asyncio.wait_for(session.first_output.wait(), rng.uniform(0.2, 6.0))
                    await asyncio.sleep(rng.uniform(0, 0.5))
                except TimeoutError:
                    pass
                session.disconnecting = True
                await disconnect.close()  # abrupt: every call on the channel is cancelled, the server sees it go
                self.tally.events["session disconnected mid-stream"] += 1
                await session.ended()
                await asyncio.gather(*jobs)
                return
            if early_close:
                await asyncio.gather(*(e.wait() for e in sent_all))
                await session.half_close()
                self.tally.events["session half-closed with requests in flight"] += 1
                await asyncio.gather(*jobs)
            else:
                await asyncio.gather(*jobs)
                await session.half_close()
            final = await session.ended()
            if final.code is not OK:
                self.tally.code(final)
                self.tally.violation(f"session ended {final.key} after its half-close: {final.message}")
            for rid, codes, reason in session.expected:
                self.tally.violation(
                    f"session: no rejected {'/'.join(c.name for c in codes)} {reason} for {rid[:80]!r}"
                )
        finally:
            for job in jobs:
                job.cancel()
            session.abort()

    async def session_bad(
        self, rng: random.Random, session: RawSession, ids: Iterator[int], sent: asyncio.Event
    ) -> None:
        """One bad message in a session: rejected or failed in-band with its expected code; the session goes on."""
        try:
            await asyncio.sleep(rng.uniform(0, 0.5))
            rid = f"bad{next(ids)}"
            long_id = "L" * rng.choice((self.id_limit + 1, 1000, 100_000))
            gen = inference_service_pb2.StartGenerate(params=generation_pb2.GenerateParams(text="Hi", max_tokens=4))
            rejects: list[tuple[str, bytes, str, grpc.StatusCode, str]] = [
                ("undecodable frame", rng.choice(UNDECODABLE), "", INVALID, "UNDECODABLE_MESSAGE"),
                ("over-long id (start)", frame(long_id, start_generate=gen), long_id, INVALID, "REQUEST_ID_TOO_LONG"),
                (
                    "over-long id (cancel)",
                    frame(long_id, cancel=inference_service_pb2.Cancel()),
                    long_id,
                    INVALID,
                    "REQUEST_ID_TOO_LONG",
                ),
                ("empty id", frame("", start_generate=gen), "", INVALID, "MISSING_REQUEST_ID"),
                (
                    "cancel of an unknown id",
                    frame(rid, cancel=inference_service_pb2.Cancel()),
                    rid,
                    NOT_FOUND,
                    "UNKNOWN_REQUEST_ID",
                ),
                (
                    "append to an unknown id",
                    frame(rid, append_text=inference_service_pb2.AppendText(text="x")),
                    rid,
                    NOT_FOUND,
                    "UNKNOWN_REQUEST_ID",
                ),
                ("no kind", frame(rid), rid, INVALID, "MISSING_KIND"),
                (
                    "Duration out of range",
                    frame(
                        rid,
                        start_synthesize=inference_service_pb2.StartSynthesize(
                            params=speech_pb2.SynthesizeParams(
                                text="Hi.", max_chunk_duration=duration_pb2.Duration(seconds=10**14)
                            )
                        ),
                    ),
                    rid,
                    INVALID,
                    "INVALID_DURATION",
                ),
            ]

            def synth(**params: Any) -> inference_service_pb2.StartSynthesize:
                return inference_service_pb2.StartSynthesize(params=speech_pb2.SynthesizeParams(**params))

            def generate(**params: Any) -> inference_service_pb2.StartGenerate:
                return inference_service_pb2.StartGenerate(
                    params=generation_pb2.GenerateParams(**{"text": "Hi", "max_tokens": 4, **params})
                )

            failures: list[tuple[str, Message, grpc.StatusCode, str]] = [
                ("NUL in synthesis text", synth(text="Hello\0there."), INVALID, "NUL_CHARACTER"),
                (
                    "temperature out of range",
                    generate(sampling=generation_pb2.SamplingParams(temperature=2.5)),
                    INVALID,
                    "SAMPLING_OUT_OF_RANGE",
                ),
                (
                    "repetition_penalty 0",
                    generate(sampling=generation_pb2.SamplingParams(repetition_penalty=0.0)),
                    INVALID,
                    "SAMPLING_OUT_OF_RANGE",
                ),
                ("max_tokens too large", generate(max_tokens=100_000), INVALID, "MAX_TOKENS_OUT_OF_RANGE"),
                ("unknown model", generate(model="gpt-17"), NOT_FOUND, "MODEL_NOT_FOUND"),
                ("unknown voice", synth(text="Hi.", voice="nobody"), NOT_FOUND, "MODEL_NOT_FOUND"),
                (
                    "text_from an unknown request",
                    inference_service_pb2.StartSynthesize(text_from_request_id="ghost"),
                    NOT_FOUND,
                    "UNKNOWN_SOURCE_REQUEST",
                ),
                ("empty synthesis text", synth(text=""), INVALID, "EMPTY_TEXT"),
            ]
            if not self.chat:
                chat = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="Hi")])
                chat_start = inference_service_pb2.StartGenerate(
                    params=generation_pb2.GenerateParams(chat=chat, max_tokens=4)
                )
                failures.append(("chat prompt, no chat template", chat_start, INVALID, "CHAT_TEMPLATE_MISSING"))
            if rng.random() < len(rejects) / (len(rejects) + len(failures)):
                what, data, echo_id, code, reason = rng.choice(rejects)
                session.expect_rejection(echo_id, {code}, reason)
                if await session.send(data):
                    self.tally.bad_input[f"session: {what} (rejected {code.name})"] += 1
                else:
                    session.expected.pop()
                return
            what, start, code, reason = rng.choice(failures)
            kind = "start_synthesize" if isinstance(start, inference_service_pb2.StartSynthesize) else "start_generate"
            tracked = session.track(rid, f"bad start ({what})")
            if not await session.send(frame(rid, **{kind: start})):
                return
            sent.set()
            outcome = await self.follow(session, tracked, None)
            if outcome.call_ended:
                self.tally.verified(tracked.check, complete=not outcome.abandoned)
                return
            self.tally.verified(tracked.check)
            if outcome.error is None or tracked.check.outputs:
                self.tally.violation(f"session bad start {what}: did not fail (outputs {tracked.check.outputs})")
                return
            self.expect(f"session: {what} (error {code.name})", outcome.error, {code}, reason)
        finally:
            sent.set()

    async def follow(self, session: RawSession, tracked: Tracked, cancel: CancelAt | None) -> Outcome:
        """Read one request's messages to its terminal, sending the Cancel that `cancel` calls for."""
        outcome = Outcome(tracked)

        async def cancel_later(delay: float) -> None:
            await asyncio.sleep(delay)
            # Counted as sent from the moment it is written: the server can answer the Cancel (and `follow` return,
            # cancelling this timer) before the write completes. The write is shielded: cancelling a pending write
            # cancels the whole call, every other request of the session with it.
            outcome.cancel_sent = True
            outcome.cancel_sent = await asyncio.shield(
                session.follow_up(tracked, cancel=inference_service_pb2.Cancel())
            )

        timer = None
        if cancel is not None and cancel.delay_s is not None:
            if cancel.delay_s == 0:
                outcome.cancel_sent = await session.follow_up(tracked, cancel=inference_service_pb2.Cancel())
            else:
                timer = asyncio.create_task(cancel_later(cancel.delay_s))
        try:
            while True:
                message = await tracked.messages.get()
                if message is None:
                    outcome.call_ended = True
                    outcome.abandoned = session.disconnecting
                    return outcome
                kind = message.WhichOneof("kind")
                if kind == "finished":
                    outcome.finished = message.finished
                    return outcome
                if kind == "error":
                    outcome.error = status_of(message.error)
                    return outcome
                if (
                    cancel is not None
                    and cancel.outputs is not None
                    and tracked.check.outputs >= cancel.outputs
                    and not outcome.cancel_sent
                ):
                    outcome.cancel_sent = await session.follow_up(tracked, cancel=inference_service_pb2.Cancel())
        finally:
            if timer is not None:
                timer.cancel()

    def settle(
        self, label: str, metric: str, outcome: Outcome, *, source_failed: bool = False, source_done_first: bool = False
    ) -> Status | None:
        """Account one ended session request; returns RESOURCE_EXHAUSTED when it should be retried."""
        check = outcome.tracked.check
        if outcome.call_ended:
            self.tally.verified(check, complete=not outcome.abandoned)
            return None
        self.tally.verified(check)
        if outcome.finished is not None:
            if outcome.finished.reason == common_pb2.FINISH_REASON_CANCELLED and source_failed:
                self.tally.cancelled[f"{label}: its generation failed or was cancelled"] += 1
                return None
            self.count_finished(
                label, outcome.finished, cancel_sent=outcome.cancel_sent, outputs=check.outputs, metric=metric
            )
            if (
                outcome.tracked.first_output_at is not None
                and outcome.finished.reason != common_pb2.FINISH_REASON_CANCELLED
            ):
                self.tally.latency[f"{metric} client, {label}"].append(
                    outcome.tracked.first_output_at - outcome.tracked.sent_at
                )
            return None
        error = outcome.error
        assert error is not None
        if error.code is RE and check.outputs == 0:
            return error
        self.tally.code(error)
        if source_failed and (error.code, error.reason) in (
            (NOT_FOUND, "UNKNOWN_SOURCE_REQUEST"),
            (INVALID, "SOURCE_ENDED"),
        ):
            self.tally.events[f"chained synthesis refused: its generation had ended ({error.reason})"] += 1
            return None
        if source_done_first and (error.code, error.reason) == (NOT_FOUND, "UNKNOWN_SOURCE_REQUEST"):
            # The generation completed and left the session before the chained start was read: a client-side race.
            self.tally.events["chained synthesis refused: its generation had completed (UNKNOWN_SOURCE_REQUEST)"] += 1
            return None
        self.tally.violation(f"{check.label}: ended {error.key}: {error.message}")
        return None

    async def session_request(
        self,
        rng: random.Random,
        session: RawSession,
        kind: str,
        ids: Iterator[int],
        cancel: CancelAt | None,
        early_close: bool,
        sent: asyncio.Event,
    ) -> None:
        """One planned request of a session (a chain is two), retried after RESOURCE_EXHAUSTED unless half-closed."""
        try:
            await asyncio.sleep(rng.uniform(0, 0.3))
            attempt = 0
            while True:
                if kind == "chain":
                    retry = await self.chain(rng, session, ids, cancel, sent)
                elif kind == "streaming":
                    retry = await self.streaming(rng, session, ids, cancel, early_close, sent)
                else:
                    rid = f"{kind[0]}{next(ids)}"
                    if kind == "generate":
                        start = frame(
                            rid, start_generate=inference_service_pb2.StartGenerate(params=self.generate_params(rng))
                        )
                        label, metric = "generate (session)", "TTFT"
                    else:
                        params = speech_pb2.SynthesizeParams(text=self.speech_text(rng))
                        start = frame(rid, start_synthesize=inference_service_pb2.StartSynthesize(params=params))
                        label, metric = "synthesize (session)", "TTFA"
                    tracked = session.track(rid, label)
                    if not await session.send(start):
                        self.tally.verified(tracked.check, complete=False)
                        return
                    sent.set()
                    retry = self.settle(label, metric, await self.follow(session, tracked, cancel))
                if retry is None:
                    return
                if early_close:
                    self.tally.code(retry)
                    self.tally.events["RESOURCE_EXHAUSTED in a half-closed session: not retried"] += 1
                    return
                attempt += 1
                if not await self.backoff(rng, retry, f"session {kind}", attempt):
                    return
        finally:
            sent.set()

    async def chain(
        self, rng: random.Random, session: RawSession, ids: Iterator[int], cancel: CancelAt | None, sent: asyncio.Event
    ) -> Status | None:
        """A generation and a synthesis speaking it (text_from_request_id), started back to back."""
        n = next(ids)
        gen_id, speech_id = f"g{n}", f"s{n}"
        params = self.generate_params(rng)
        params.max_tokens = min(params.max_tokens, 24)
        gen = session.track(gen_id, "generate (chain)")
        speech = session.track(speech_id, "synthesize (chained)")
        start_gen = frame(gen_id, start_generate=inference_service_pb2.StartGenerate(params=params))
        start_speech = frame(
            speech_id, start_synthesize=inference_service_pb2.StartSynthesize(text_from_request_id=gen_id)
        )
        if not await session.send(start_gen) or not await session.send(start_speech):
            self.tally.verified(gen.check, complete=False)
            self.tally.verified(speech.check, complete=False)
            return None
        sent.set()
        cancel_gen = cancel is not None and rng.random() < 0.5
        gen_outcome, speech_outcome = await asyncio.gather(
            self.follow(session, gen, cancel if cancel_gen else None),
            self.follow(session, speech, None if cancel_gen else cancel),
        )
        gen_failed = gen_outcome.error is not None or (
            gen_outcome.finished is not None and gen_outcome.finished.reason == common_pb2.FINISH_REASON_CANCELLED
        )
        gen_retry = self.settle("generate (chain)", "TTFT", gen_outcome)
        done_first = (
            gen.terminal_order is not None
            and speech.terminal_order is not None
            and gen.terminal_order < speech.terminal_order
        )
        speech_retry = self.settle(
            "synthesize (chained)", "TTFA", speech_outcome, source_failed=gen_failed, source_done_first=done_first
        )
        if gen_retry is not None and speech_retry is not None:
            self.tally.code(speech_retry)  # both refused: one retry of the pair
        return gen_retry or speech_retry

    async def streaming(
        self,
        rng: random.Random,
        session: RawSession,
        ids: Iterator[int],
        cancel: CancelAt | None,
        early_close: bool,
        sent: asyncio.Event,
    ) -> Status | None:
        """A streaming-input synthesis: text in AppendText pieces, then EndInput (or the session's half-close).

        Sometimes a NUL piece (rejected, the request goes on) or, once audio flows, a duplicate start (rejected).
        """
        rid = f"t{next(ids)}"
        words = " ".join(rng.sample(SENTENCES, rng.randint(1, 3))).split(" ")
        cut = rng.randint(1, len(words))
        pieces = [" ".join(words[:cut])] + [" " + w for w in words[cut:]]
        tracked = session.track(rid, "synthesize (streaming input)")
        start = inference_service_pb2.StartSynthesize(
            params=speech_pb2.SynthesizeParams(text=pieces[0]), streaming_input=True
        )
        if not await session.send(frame(rid, start_synthesize=start)):
            self.tally.verified(tracked.check, complete=False)
            return None
        mid_input_cancel = cancel is not None and rng.random() < 0.3
        # A duplicate start is refused only while the request is surely in flight: not with a Cancel on its way (the
        # request could end and free its id before the duplicate arrives, which the server then rightly starts).
        duplicate = not early_close and cancel is None and rng.random() < 0.15
        nul = rng.random() < 0.1
        cancelled_mid_input = False
        follower = asyncio.create_task(self.follow(session, tracked, None if mid_input_cancel else cancel))
        try:
            for i, piece in enumerate(pieces[1:], 1):
                if follower.done():
                    break
                if not early_close:
                    await asyncio.sleep(rng.uniform(0, 0.15))
                if nul and i == 1:
                    session.expect_rejection(rid, {INVALID}, "NUL_CHARACTER")
                    if await session.follow_up(tracked, append_text=inference_service_pb2.AppendText(text="a\0b")):
                        self.tally.bad_input["session: NUL in AppendText (rejected INVALID_ARGUMENT)"] += 1
                    else:
                        session.expected.pop()
                if mid_input_cancel and i == max(1, len(pieces) // 2):
                    cancelled_mid_input = await session.follow_up(tracked, cancel=inference_service_pb2.Cancel())
                    break
                await session.follow_up(tracked, append_text=inference_service_pb2.AppendText(text=piece))
            else:
                if duplicate:
                    # Only once audio flows is the request surely in flight (it cannot end before EndInput).
                    await session.follow_up(tracked, append_text=inference_service_pb2.AppendText(text=" Again."))
                    audio = asyncio.create_task(tracked.has_output.wait())
                    await asyncio.wait({audio, follower}, return_when=asyncio.FIRST_COMPLETED)
                    audio.cancel()
                    if tracked.check.outputs and tracked.check.terminal is None:
                        session.expect_rejection(rid, {grpc.StatusCode.ALREADY_EXISTS}, "DUPLICATE_REQUEST_ID")
                        if await session.send(frame(rid, start_synthesize=start)):
                            self.tally.bad_input["session: duplicate start (rejected ALREADY_EXISTS)"] += 1
                        else:
                            session.expected.pop()
                if not early_close:
                    await session.follow_up(tracked, end_input=inference_service_pb2.EndInput())
            sent.set()
            outcome = await follower
            outcome.cancel_sent = outcome.cancel_sent or cancelled_mid_input
            return self.settle("synthesize (streaming input)", "TTFA", outcome)
        finally:
            follower.cancel()

    # -- the SDK --

    @staticmethod
    async def sdk_drain(stream: RequestStream[Any], label: str) -> Finished | None:
        """Read an SDK stream to its end (the SDK checks seq itself); its progress feeds the hang watch."""
        watch = Check(label)
        finished = None
        async for event in stream:
            watch.last_at = time.monotonic()
            if isinstance(event, Finished):
                finished = event
        watch.terminal = "finished"
        return finished

    async def sdk_scenario(self, rng: random.Random, channel: grpc.aio.Channel) -> None:
        """The SDK on the shared channel: a one-shot generation, or a generate→speak chain in an SDK session."""
        client = Client(channel)
        attempt = 0
        while True:
            try:
                self.tally.calls(+1)
                try:
                    if rng.random() < 0.5:
                        label = "generate (SDK one-shot)"
                        params = self.generate_params(rng)
                        stream = client.generate(
                            params.text or PROMPTS[0],
                            max_tokens=params.max_tokens,
                            temperature=params.sampling.temperature,
                        )
                        finished = await self.sdk_drain(stream, label)
                        if finished is None or finished.reason is FinishReason.CANCELLED:
                            self.tally.violation(f"{label}: ended {finished}")
                        else:
                            self.tally.served[label] += 1
                    else:
                        label = "chain (SDK session)"
                        async with client.session() as sdk:
                            generation = await sdk.generate(rng.choice(PROMPTS), max_tokens=rng.randint(4, 16))
                            speech = await sdk.synthesize(text_from=generation)
                            text, audio = await asyncio.gather(
                                self.sdk_drain(generation, "generate (SDK chain)"),
                                self.sdk_drain(speech, "synthesize (SDK chain)"),
                                return_exceptions=True,
                            )
                        if isinstance(text, BaseException):
                            raise text
                        if isinstance(audio, BaseException):
                            raise audio
                        if audio is None or audio.reason is FinishReason.CANCELLED:
                            self.tally.violation(f"{label}: the chained synthesis ended {audio} ({text})")
                        else:
                            self.tally.served[label] += 1
                finally:
                    self.tally.calls(-1)
                return
            except ResourceExhaustedError as error:
                status = Status(RE, error.reason, error.retry_after, error.message)
                attempt += 1
                if not await self.backoff(rng, status, "SDK", attempt):
                    return
            except ProtocolError as error:
                self.tally.lost.append(f"SDK: {error}")
                return
            except RilletError as error:
                self.tally.code(Status(error.code, error.reason, error.retry_after, error.message))
                self.tally.violation(f"SDK: {error}")
                return


# ---- leak checks ---------------------------------------------------------------------------------------------


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
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)

        async def one(i: int) -> tuple[Check, common_pb2.Finished | None, str]:
            check = Check(f"{kind} slot check {i}")
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
            finished = None
            try:
                async for response in call:
                    check.feed(response.seq, response.WhichOneof("kind"))
                    if response.WhichOneof("kind") == "finished":
                        finished = response.finished
            except grpc.aio.AioRpcError as error:
                return check, None, status_of_call(error).key
            return check, finished, ""

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(slots))), 600)
    problems = [f"{c.label}: {p}" for c, _, _ in results for p in c.problems]
    problems += [f"{c.label}: failed {e}" for c, _, e in results if e]
    problems += [f"{c.label}: no finished" for c, f, e in results if f is None and not e]
    finished = [f for _, f, _ in results if f is not None]
    return SlotCheck(
        kind,
        slots,
        [duration_s(f.timings.queue_duration) for f in finished],
        [duration_s(f.timings.total_duration) for f in finished],
        [common_pb2.FinishReason.Name(f.reason) for f in finished],
        problems,
    )


# ---- the run -------------------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def load(opts: argparse.Namespace, target: str, pid: int, chat: bool) -> dict[str, Any]:
    """The load phase, in a process of its own: when it exits, every client connection is really gone.

    (A closed grpc.aio channel may keep its TCP connection while Python objects of its calls are still alive.)
    """
    return asyncio.run(_load(opts, target, pid, chat))


async def _load(opts: argparse.Namespace, target: str, pid: int, chat: bool) -> dict[str, Any]:
    console = Console(width=None if sys.stdout.isatty() else 160)
    tally = Tally()
    soak = Soak(opts, target, tally, chat=chat)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    soak.deadline = started + opts.duration_s
    channels = [connect(target) for _ in range(opts.channels)]
    clients = [asyncio.create_task(soak.client(i, channels[i % len(channels)])) for i in range(opts.sessions)]

    def sample() -> None:
        stats = proc_stats(pid)
        served = sum(tally.served.values())
        elapsed = time.monotonic() - started
        samples.append({"elapsed_s": elapsed, **asdict(stats), "open_calls": tally.open_calls, "served": served})
        if len(samples) % samples_a_minute(opts):
            return  # a line a minute on the console; every sample in the results
        console.print(
            f"  {elapsed:5.0f}s RSS {stats.rss_mb:6.1f} MB threads {stats.threads} fds {stats.fds} calls open "
            f"{tally.open_calls} served {served} cancelled {sum(tally.cancelled.values())} lost {len(tally.lost)} "
            f"violations {len(tally.violations)}"
        )

    async def sampler() -> None:
        next_sample = started + opts.sample_every_s
        while True:
            await asyncio.sleep(1.0)
            tally.open_calls_samples.append(tally.open_calls)
            if time.monotonic() >= next_sample:
                next_sample += opts.sample_every_s
                sample()

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*clients)
    sampling.cancel()
    sample()
    for channel in channels:
        await channel.close()
    return {
        "elapsed_s": time.monotonic() - started,
        "served": dict(tally.served.most_common()),
        "cancelled": dict(tally.cancelled.most_common()),
        "bad_input": dict(tally.bad_input.most_common()),
        "events": dict(tally.events.most_common()),
        "codes": dict(tally.codes.most_common()),
        "streams_verified": tally.streams_verified,
        "lost": tally.lost,
        "violations": tally.violations,
        "latency": {
            name: {"n": len(v), "p50_s": percentile(v, 50), "p99_s": percentile(v, 99)}
            for name, v in sorted(tally.latency.items())
            if v
        },
        "open_calls": {
            "mean": statistics.fmean(tally.open_calls_samples) if tally.open_calls_samples else 0,
            "max": max(tally.open_calls_samples, default=0),
        },
        "samples": samples,
    }


async def run(opts: argparse.Namespace, target: str, pid: int, console: Console, scratch: Path) -> dict[str, Any]:
    """Warm up and take the baseline, run the load in a child process, then check for leaks with every client gone."""
    async with grpc.aio.insecure_channel(target) as channel:
        listed = await inference_service_pb2_grpc.InferenceServiceStub(channel).ListModels(
            inference_service_pb2.ListModelsRequest()
        )
    text_model = next(
        m for m in listed.models if m.kind == inference_service_pb2.Model.KIND_TEXT_GENERATION and m.is_default
    )
    chat = text_model.supports_chat
    console.print(f"default text model {text_model.name}: chat prompts {'served' if chat else 'are bad input'}")
    console.print("slot check before the soak (also warms every path)...")
    text_before = await slot_check(target, "generate", opts.text_slots, opts.slot_check_tokens)
    speech_before = await slot_check(target, "synthesize", opts.speech_slots, 0)
    await asyncio.sleep(opts.settle_s)
    baseline = proc_stats(pid)
    baseline_fds = fd_kinds(pid)
    console.print(f"baseline: {baseline}; {opts.sessions} clients for {opts.duration_s:.0f}s...")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        result = await asyncio.wrap_future(child.submit(load, opts, target, pid, chat))
    (scratch / "load.json").write_text(json.dumps(result, indent=2))  # kept whatever happens next
    samples = [{"elapsed_s": 0.0, **asdict(baseline), "open_calls": 0, "served": 0}, *result.pop("samples")]
    elapsed = result["elapsed_s"]
    console.print(f"soak done in {elapsed:.0f}s; every client gone (its process exited). Leak check...")
    await asyncio.sleep(opts.settle_s)
    text_after = await slot_check(target, "generate", opts.text_slots, opts.slot_check_tokens)
    speech_after = await slot_check(target, "synthesize", opts.speech_slots, 0)
    retried: dict[str, Any] = {}
    if not (text_after.ok(opts.slot_queue_max_s) and speech_after.ok(opts.slot_queue_max_s)):
        console.print(f"slot check failed: {text_after.problems[:3]} {speech_after.problems[:3]}; again in 30s")
        await asyncio.sleep(30)  # a slow clean-up recovers; a leak does not
        retry_text = await slot_check(target, "generate", opts.text_slots, opts.slot_check_tokens)
        retry_speech = await slot_check(target, "synthesize", opts.speech_slots, 0)
        retried = {"generate": asdict(retry_text), "synthesize": asdict(retry_speech)}
    thread_slack = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor, grown on demand and kept
    after = proc_stats(pid)
    for _ in range(30):  # closed connections leave the server's fd table asynchronously
        if after.threads <= baseline.threads + thread_slack and after.fds <= baseline.fds + opts.fd_slack:
            break
        await asyncio.sleep(1.0)
        after = proc_stats(pid)
    late_growth, late_peak_rise = rss_rise([s for s in samples if s["elapsed_s"] >= elapsed / 2])
    leaks = {
        "slot_check_before": {"generate": asdict(text_before), "synthesize": asdict(speech_before)},
        "slot_check_after": {"generate": asdict(text_after), "synthesize": asdict(speech_after)},
        "slot_check_after_30s_more": retried,
        "slots_ok": text_after.ok(opts.slot_queue_max_s) and speech_after.ok(opts.slot_queue_max_s),
        "baseline": asdict(baseline),
        "after": asdict(after),
        "thread_slack": thread_slack,
        "fd_slack": opts.fd_slack,
        "fd_kinds_baseline": baseline_fds,
        "fd_kinds_after": fd_kinds(pid),
        "tcp_states_after": tcp_states(int(target.rsplit(":", 1)[1])),
        "threads_ok": after.threads <= baseline.threads + thread_slack,
        "fds_ok": after.fds <= baseline.fds + opts.fd_slack,
    }
    rss = {
        "start_mb": baseline.rss_mb,
        "end_mb": samples[-1]["rss_mb"],
        "late_growth_mb": late_growth,
        "late_peak_rise_mb": late_peak_rise,
    }
    return {**result, "rss": {**rss, "samples": samples}, "leaks": leaks}


def samples_a_minute(opts: argparse.Namespace) -> int:
    """How many RSS samples --sample-every-s takes a minute (at least 1): the console and the .md show one of them."""
    every_s: float = opts.sample_every_s
    return max(1, round(60 / every_s))


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


def serve(opts: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RILLET_HOST": "127.0.0.1",
        "RILLET_LLAMACPP__SLOTS": str(opts.text_slots),
        "RILLET_LLAMACPP__N_THREADS": str(opts.threads),
        "RILLET_PIPER__SLOTS": str(opts.speech_slots),
        "RILLET_PIPER__RELEASE_MEMORY": str(opts.piper_release_memory).lower(),
        "RILLET_LOG_LEVEL": "WARNING",
    }
    if opts.model:
        env["RILLET_LLAMACPP__MODEL_PATH"] = opts.model
    with log.open("wb") as sink:
        return subprocess.Popen([str(BIN / "rillet"), "serve", "--port", str(port)], env=env, stdout=sink, stderr=sink)


def revision() -> str:
    """The commit the server ran, marked when the working tree had uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def verdict(opts: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    """What failed, empty when the soak passed."""
    leaks = result["leaks"]
    failed = []
    if result["lost"]:
        failed.append(f"{len(result['lost'])} lost streams")
    if result["violations"]:
        failed.append(f"{len(result['violations'])} contract violations")
    never = {k: v for k, v in result["codes"].items() if k.split()[0] in ("UNKNOWN", "INTERNAL")}
    if never:
        failed.append(f"UNKNOWN/INTERNAL seen: {never}")
    if not leaks["slots_ok"]:
        failed.append("slots not all free after the soak")
    if not leaks["threads_ok"] or not leaks["fds_ok"]:
        failed.append("threads or fds above baseline")
    if result["rss"]["late_growth_mb"] > opts.max_late_growth_mb:
        failed.append(f"RSS grew {result['rss']['late_growth_mb']:.1f} MB over the second half")
    if result["server_log"]["errors"]:
        failed.append(f"{result['server_log']['errors']} ERROR lines in the server log")
    if result["server_exit"] != 0:
        failed.append(f"server exited {result['server_exit']} on SIGTERM")
    return failed


def report(opts: argparse.Namespace, meta: dict[str, Any], result: dict[str, Any], failed: list[str]) -> str:
    leaks = result["leaks"]
    md = [
        f"# Rillet soak {meta['date']}: {'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        f"{result['elapsed_s']:.0f} s of load; calls open at once (sampled each second): mean "
        f"{result['open_calls']['mean']:.0f}, peak {result['open_calls']['max']}.",
        "",
        "## Verification",
        "",
        f"- streams verified (seq 0..n without a gap, one terminal, nothing after it): {result['streams_verified']}",
        f"- lost (no terminal, a seq gap, a message after the terminal, a hang): **{len(result['lost'])}**",
        f"- contract violations (an unexpected code, reason or message; UNKNOWN; INTERNAL): "
        f"**{len(result['violations'])}**",
        f"- leaked: **{'none' if leaks['slots_ok'] and leaks['threads_ok'] and leaks['fds_ok'] else 'YES'}** (below)",
        "",
        "## Served (completed requests) by kind",
        "",
        "| kind | served |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["served"].items()),
        f"| **total** | **{sum(result['served'].values())}** |",
        "",
        "## Cancelled by the client (where the cancel landed, from the server's Finished timings)",
        "",
        "| request: where | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["cancelled"].items()),
        "",
        "## Bad input (each got its expected code and reason)",
        "",
        "| input | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["bad_input"].items()),
        "",
        "## Every non-OK status seen, by code and reason",
        "",
        "RESOURCE_EXHAUSTED (admission queue full, with a RetryInfo hint) is expected under this load: the client",
        "waited retry_after and retried. The other codes are the bad inputs' expected answers.",
        "",
        "| code reason | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["codes"].items()),
        "",
        "## Events",
        "",
        "| event | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["events"].items()),
        "",
        "## Latency",
        "",
        "Client: from sending the start (of the attempt that was admitted) to the first output. Server:",
        "Finished.timings (time_to_first_output and queue_duration, from arrival), completed requests only. Both",
        "include the admission queue, full for most of the run.",
        "",
        "| metric | n | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['n']} | {v['p50_s'] * 1e3:.0f} | {v['p99_s'] * 1e3:.0f} |"
            for k, v in result["latency"].items()
        ),
        "",
        "## Server process (/proc)",
        "",
        "| elapsed s | RSS MB | threads | open fds | calls open | served so far |",
        "|---|---|---|---|---|---|",
        *(
            f"| {s['elapsed_s']:.0f} | {s['rss_mb']:.1f} | {s['threads']} | {s['fds']} | {s['open_calls']} "
            f"| {s['served']} |"
            for s in result["rss"]["samples"][:: samples_a_minute(opts)]  # a row a minute
        ),
        "",
        f"RSS at start {result['rss']['start_mb']:.1f} MB (after the warm-up slot check), at the end "
        f"{result['rss']['end_mb']:.1f} MB; rise over the second half by its trend line (least squares through "
        f"every sample of it, the JSON has them all) {result['rss']['late_growth_mb']:+.1f} MB (allowed "
        f"{opts.max_late_growth_mb} MB); its highest sample minus the first "
        f"{result['rss']['late_peak_rise_mb']:+.1f} MB.",
        "",
        "## Leak check (every client gone)",
        "",
    ]
    for when in ("before", "after"):
        for kind in ("generate", "synthesize"):
            c = leaks[f"slot_check_{when}"][kind]
            queue = max(c["queue_s"], default=float("nan"))
            md.append(
                f"- {when} the soak{' (the warm-up, not judged)' if when == 'before' else ''}, "
                f"{c['slots']} concurrent {kind} requests: {len(c['queue_s'])} finished "
                f"({', '.join(sorted(set(c['reasons'])))}), server queue_duration max {queue * 1e3:.1f} ms "
                f"(allowed {opts.slot_queue_max_s * 1e3:.0f} ms), total max {max(c['total_s'], default=0):.2f} s"
                + (f"; problems: {c['problems'][:3]}" if c["problems"] else "")
            )
    for kind, c in leaks["slot_check_after_30s_more"].items():
        md.append(
            f"- the after-soak check failed, so again 30 s later: {len(c['queue_s'])} of {c['slots']} {kind} requests "
            f"finished, queue_duration max {max(c['queue_s'], default=float('nan')) * 1e3:.1f} ms"
            + (f"; problems: {c['problems'][:3]}" if c["problems"] else "")
        )
    b, a = leaks["baseline"], leaks["after"]
    md += [
        f"- threads: baseline {b['threads']}, after {a['threads']} (allowed +{leaks['thread_slack']}: asyncio's "
        f"default executor grows on demand and keeps its threads); open fds: baseline {b['fds']}, after {a['fds']} "
        f"(allowed +{leaks['fd_slack']}); RSS after the leak check {a['rss_mb']:.1f} MB.",
        f"- server fds by kind: baseline {leaks['fd_kinds_baseline']}, after {leaks['fd_kinds_after']}; TCP "
        f"connections on the server's port after: {leaks['tcp_states_after'] or 'none'}.",
        "",
        f"Server log ({result['server_log']['lines']} lines at WARNING and above): {result['server_log']['errors']} "
        f"ERROR lines; exit status on SIGTERM: {result['server_exit']}.",
    ]
    if result["server_log"]["first_errors"]:
        md += ["", "```", *result["server_log"]["first_errors"], "```"]
    if result["lost"] or result["violations"]:
        md += ["", "## Lost and violations (first 30 each)", "", *(f"- lost: {x}" for x in result["lost"][:30])]
        md += [f"- violation: {x}" for x in result["violations"][:30]]
    return "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=ABOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=900.0, help="how long clients start new work")
    parser.add_argument("--sessions", type=int, default=200, help="concurrent clients, each looping over scenarios")
    parser.add_argument(
        "--channels", type=int, default=50, help="connections the clients share (disconnects use their own)"
    )
    parser.add_argument("--min-tokens", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cancel-chance", type=float, default=0.25, help="requests the client cancels")
    parser.add_argument("--bad-chance", type=float, default=0.3, help="sessions that carry bad messages")
    parser.add_argument("--think-s", type=float, default=1.0, help="each client's pause between scenarios, at most")
    parser.add_argument("--hang-s", type=float, default=300.0, help="a scenario silent this long is hung (lost)")
    parser.add_argument("--scenario-timeout-s", type=float, default=1800.0, help="a scenario longer than this is hung")
    parser.add_argument("--text-slots", type=int, default=0, help="llama.cpp slots; 0 sizes them as the server does")
    parser.add_argument("--speech-slots", type=int, default=PiperConfig().slots)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 adapts)")
    parser.add_argument("--request-id-limit", type=int, default=128, help="the server's max_request_id_chars")
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="server RSS, threads and fds")
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause between the last client and the leak check")
    parser.add_argument(
        "--slot-check-tokens", type=int, default=64, help="a leaked slot would queue a request this long generation"
    )
    parser.add_argument("--slot-queue-max-s", type=float, default=1.5, help="queue_duration allowed in the leak check")
    parser.add_argument("--fd-slack", type=int, default=4)
    parser.add_argument(
        "--max-late-growth-mb", type=float, default=32.0, help="RSS rise allowed over the 2nd half (its trend line)"
    )
    parser.add_argument(
        "--piper-release-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the server's piper.release_memory: RSS that follows demand, so the growth check can see leaks",
    )
    parser.add_argument("--max-attempts", type=int, default=8, help="tries of a request refused RESOURCE_EXHAUSTED")
    parser.add_argument("--revision", help="what the server runs, for the report (default: git describe of this tree)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", help="GGUF path (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    opts.text_slots = resolve_slots(LlamaCppConfig(slots=opts.text_slots))  # the count the leak check must fill
    console = Console(width=None if sys.stdout.isatty() else 160)
    port = free_port()
    target = f"127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="rillet-soak-")) / "server.log"
    process = serve(opts, port, log)
    exit_status: int | None = None
    try:
        subprocess.run(
            [str(BIN / "rillet"), "health", "--target", target, "--wait", "300"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=320,
        )
        result = asyncio.run(run(opts, target, process.pid, console, log.parent))
    finally:
        process.terminate()
        try:
            exit_status = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if " ERROR " in line or line.startswith("Traceback")]
    result["server_log"] = {"path": str(log), "lines": len(lines), "errors": len(errors), "first_errors": errors[:20]}
    result["server_exit"] = exit_status
    failed = verdict(opts, result)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": opts.revision or revision(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work: timings are indicative)",
        "engines": "llamacpp (Gemma 3 270M Q4_K_M) + piper (bundled voice), the defaults",
        "duration_s": opts.duration_s,
        "sessions (concurrent clients)": opts.sessions,
        "channels": opts.channels,
        "max_tokens": f"{opts.min_tokens}-{opts.max_tokens}",
        "text slots / speech slots": f"{opts.text_slots} / {opts.speech_slots}",
        "piper release_memory": opts.piper_release_memory,
        "cancel chance": opts.cancel_chance,
        "seed": opts.seed,
        "passed": not failed,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"soak_{stamp}.json").write_text(json.dumps({"meta": meta, "failed": failed, **result}, indent=2))
    (opts.out / f"soak_{stamp}.md").write_text(report(opts, meta, result, failed))
    console.print(f"{'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}; wrote {opts.out / f'soak_{stamp}.md'}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
