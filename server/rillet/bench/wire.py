"""The one verifying raw client: each request's messages checked as they arrive, on one-shot calls and Sessions.

Raw means rillet.v1 frames through grpc.aio (the generated stubs, or bytes sent as they are, so that a client can send
broken frames on purpose), independent of the SDK, whose own checks are among what is tested. Times are
`time.perf_counter()` when a message is read (CLOCK_MONOTONIC on Linux: one clock for every process).

A Stream is one request. What it checks; each violation is a problem, and a stream with one is LOST, never a success:
- seq 0, 1, 2, ... without a gap; exactly one terminal message (`finished` or `error`), and nothing after it;
- a call that ends OK has carried the terminal message of each of its requests;
- with `counts`: the tokens received equal the usage's output_tokens, and audio chunks follow each other
  (offset_samples) and add up to the usage's output_audio_duration (within 10 ms).
A request that fails (an `error` message, its start refused by `rejected`, the call's status) is not lost: it keeps
the Status (code, ErrorInfo reason, RetryInfo delay, message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from rillet.v1 import common_pb2
from rillet.v1 import inference_service_pb2 as pb

SERVICE = "/rillet.v1.InferenceService/"
CODES = {code.value[0]: code for code in grpc.StatusCode}
MESSAGE_CHARS = 200
"""How much of an error's message is kept (a sample for the results, not a log)."""
AUDIO_TOLERANCE_S = 0.01


@dataclass(frozen=True)
class Status:
    """A canonical code with the ErrorInfo reason and RetryInfo delay the server attached, and its message."""

    code: grpc.StatusCode
    reason: str = ""
    retry_after: float | None = None
    message: str = ""

    @property
    def key(self) -> str:
        """Code and reason, e.g. "INVALID_ARGUMENT EMPTY_PROMPT": what errors are counted by."""
        return f"{self.code.name} {self.reason}".strip()


def status_of(message: status_pb2.Status) -> Status:
    """A google.rpc.Status (an in-band `error` or `rejected`, or a call's status details) as a Status."""
    reason, retry_after = "", None
    for detail in message.details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    code = CODES.get(message.code, grpc.StatusCode.UNKNOWN)
    return Status(code, reason, retry_after, message.message[:MESSAGE_CHARS])


def status_of_call(error: grpc.aio.AioRpcError) -> Status:
    """The status a failed call carries: the google.rpc.Status in its trailers when there is one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_of(status_pb2.Status.FromString(value))
    return Status(error.code(), "", None, (error.details() or "")[:MESSAGE_CHARS])


def as_is(data: bytes) -> bytes:
    """The serializer of raw frames: the bytes are sent as they are, however broken."""
    return data


def frame(request_id: str, **kind: Message) -> bytes:
    """A SessionRequest for `request_id` with one kind set (start_generate=..., cancel=...), serialized."""
    return pb.SessionRequest(request_id=request_id, **kind).SerializeToString()  # type: ignore[arg-type]


@dataclass(eq=False)
class Stream:
    """One request as the client saw it: its messages checked and timed as they arrive (see the module docstring).

    `kind` is the output it carries: "text" (token deltas) or "speech" (audio chunks). `judged` is set by whoever
    has already accounted for the stream: a problem found after that is reported on its own (RawSession.late).
    """

    label: str = ""
    kind: str = "text"
    counts: bool = True
    started: float = field(default_factory=time.perf_counter)
    first: float | None = None  # the first output (token delta or audio chunk)
    last_at: float | None = None  # the last message of any kind
    ended: float | None = None
    gaps: list[float] = field(default_factory=list)  # between consecutive output messages
    outputs: int = 0  # output messages
    tokens: int = 0
    audio_s: float = 0.0
    next_seq: int = 0
    terminal: str | None = None  # the terminal message's kind, once it came
    finished: common_pb2.Finished | None = None
    error: Status | None = None  # why the request failed, when it did
    problems: list[str] = field(default_factory=list)
    judged: bool = False
    _samples: int = 0  # audio samples received: the next chunk's offset_samples
    _last_output: float = 0.0

    @property
    def ok(self) -> bool:
        """Ended without an error and without a problem."""
        return self.error is None and not self.problems

    @property
    def lost(self) -> str | None:
        """The first problem, when there is one."""
        return self.problems[0] if self.problems else None

    def lose(self, why: str) -> None:
        self.problems.append(why)

    def feed(self, response: Any, now: float) -> str | None:
        """One message of the request (a Generate, Synthesize or Session response) read at `now`; returns its kind."""
        kind: str | None = response.WhichOneof("kind")
        seq: int = response.seq
        self.last_at = now
        if self.terminal is not None:
            self.lose(f"{kind} (seq {seq}) after the terminal {self.terminal}")
            self.next_seq = seq + 1
            return kind  # not counted
        if seq != self.next_seq:
            self.lose(f"seq {seq} where {self.next_seq} was due")
        self.next_seq = seq + 1
        if kind == "token_delta":
            self._output(now)
            self.tokens += len(response.token_delta.token_ids)
        elif kind == "audio_chunk":
            self._output(now)
            self._audio(response.audio_chunk)
        elif kind == "finished":
            self._finished(response.finished, now)
        elif kind == "error":
            self.terminal, self.error, self.ended = "error", status_of(response.error), now
        else:
            self.lose(f"unexpected message kind {kind!r}")
        return kind

    def failed(self, status: Status, now: float) -> None:
        """The request failed without a terminal message of its own: the call's status, or its start refused."""
        self.error = status
        if self.ended is None:
            self.ended = now

    def closed(self, now: float) -> None:
        """Its call ended OK: it must have carried the terminal message."""
        if self.terminal is None and self.error is None:
            self.lose("the stream ended without a terminal message")
        if self.ended is None:
            self.ended = now

    def _output(self, now: float) -> None:
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self._last_output)
        self._last_output = now
        self.outputs += 1

    def _audio(self, chunk: Any) -> None:
        samples = len(chunk.audio) // (2 * max(1, chunk.channel_count))
        if self.counts and chunk.offset_samples != self._samples:
            self.lose(f"audio offset {chunk.offset_samples} where {self._samples} was due")
        self._samples += samples
        if chunk.sample_rate_hertz:
            self.audio_s += samples / chunk.sample_rate_hertz

    def _finished(self, finished: common_pb2.Finished, now: float) -> None:
        self.terminal, self.finished, self.ended = "finished", finished, now
        if not self.counts:
            return
        usage = finished.usage
        if self.kind == "text" and usage.output_tokens != self.tokens:
            self.lose(f"{self.tokens} tokens received, usage says {usage.output_tokens}")
        if self.kind == "speech" and usage.HasField("output_audio_duration"):
            duration = usage.output_audio_duration
            reported = duration.seconds + duration.nanos / 1e9
            if abs(reported - self.audio_s) > AUDIO_TOLERANCE_S:
                self.lose(f"{self.audio_s:.3f}s of audio received, usage says {reported:.3f}s")


async def drain(call: Any, stream: Stream, stop: Callable[[Stream], bool] | None = None) -> bool:
    """Read a one-shot call (Generate or Synthesize) into `stream` until it ends.

    With `stop`, asked after every message: True stops reading there and is returned (the call is then the
    caller's to cancel). A failed call's status goes to the stream.
    """
    try:
        async for response in call:
            stream.feed(response, time.perf_counter())
            if stop is not None and stop(stream):
                return True
    except grpc.aio.AioRpcError as error:
        stream.failed(status_of_call(error), time.perf_counter())
        return False
    stream.closed(time.perf_counter())
    return False


SESSION_ENDED = "SESSION_ENDED"
"""The reason a request gets when it is started on a Session call that had already ended OK.

A client-side label of the bench's own (its status is FAILED_PRECONDITION, a code the server never sends): no server
sends it, so it is not among the server's reasons (rillet.server.reasons, rillet.v1.ErrorReason)."""


@dataclass(eq=False)
class Request:
    """A request started on a RawSession: its Stream, and its messages for a client that follows them (`messages`).

    `messages` gets every message of the request, then None if it ends without its terminal message (its start
    refused, or the call over). `done` is set once it is over in any of those ways.
    """

    id: str
    stream: Stream
    messages: asyncio.Queue[pb.SessionResponse | None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    has_output: asyncio.Event = field(default_factory=asyncio.Event)
    terminal_order: int | None = None  # how many of the session's requests had ended, this one included
    follow_ups: int = 0  # Cancel, AppendText or EndInput sent after the start

    def _over(self) -> None:
        if not self.done.is_set():
            self.done.set()
            if self.messages is not None and self.stream.terminal is None:
                self.messages.put_nowait(None)


class RawSession:
    """One Session call on raw frames; a reader routes each response to the Request it belongs to.

    A request is over at its terminal message; when its start is refused (a `rejected` before anything else was
    sent or seen about it: the request never ran); or when the call ends: failed with the call's status, or, the
    call ended OK, lost (no terminal message). What the base cannot judge is left to three hooks: `rejected` (other
    refusals), `stray` (a message for an id never started) and `late` (a message after a request's terminal).
    """

    def __init__(self, channel: grpc.aio.Channel, label: str = "session", *, timeout: float | None = None) -> None:
        method = channel.stream_stream(
            SERVICE + "Session", request_serializer=as_is, response_deserializer=pb.SessionResponse.FromString
        )
        self.call: grpc.aio.StreamStreamCall[bytes, pb.SessionResponse] = method(timeout=timeout)
        self.label = label
        self.requests: dict[str, Request] = {}
        self.final: Status | None = None  # how the call ended, once it has
        self.first_output = asyncio.Event()  # any request's first output
        self._lock = asyncio.Lock()
        self._half_closed = False
        self._terminals = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def track(
        self, request_id: str, label: str, kind: str = "text", *, follow: bool = False, counts: bool = True
    ) -> Request:
        """Start watching `request_id` (before its start is sent: its first reply may come at once)."""
        request = Request(request_id, Stream(label, kind, counts), asyncio.Queue() if follow else None)
        self.requests[request_id] = request
        if self._reader.done():  # the call is over: so is the request
            assert self.final is not None
            over = self.final
            if over.code is grpc.StatusCode.OK:
                over = Status(
                    grpc.StatusCode.FAILED_PRECONDITION, SESSION_ENDED, message="its session's call had ended"
                )
            request.stream.failed(over, time.perf_counter())
            request._over()
        return request

    async def send(self, data: bytes) -> bool:
        """Write one frame; False when the call is over or half-closed (its status says why)."""
        if self._half_closed or self._reader.done():
            return False
        async with self._lock:
            try:
                await self.call.write(data)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                return False
        return True

    async def follow_up(self, request: Request, **kind: Message) -> bool:
        """Send a Cancel, AppendText or EndInput about `request`."""
        request.follow_ups += 1
        return await self.send(frame(request.id, **kind))

    async def half_close(self) -> None:
        """No new requests: the server ends the call once those in flight are over."""
        async with self._lock:
            if not self._half_closed and not self._reader.done():
                self._half_closed = True
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    await self.call.done_writing()

    async def ended(self) -> Status:
        """How the call ended, once it has."""
        await self._reader
        assert self.final is not None
        return self.final

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Half-close and wait up to `grace_s` for the call to end; cancel it then."""
        await self.half_close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), grace_s)
        except TimeoutError:
            self.abort()
            await asyncio.gather(self._reader, return_exceptions=True)

    def abort(self) -> None:
        """Cancel the call (every request in it ends on the server)."""
        self.call.cancel()

    # -- hooks --

    def rejected(self, request_id: str, seq: int, status: Status) -> None:
        """A `rejected` reply: here, only a refused start counts (the request failed: it never ran).

        A rejection about a request of which nothing was seen yet and nothing but its start was sent is taken for
        the refusal of that start: exact for a client that sends only starts (`rillet bench`); a client that sends
        other frames about its requests matches their rejections itself first (the soak's SoakSession).
        """
        request = self.requests.get(request_id)
        if request is None or request.done.is_set() or request.follow_ups or request.stream.next_seq:
            return
        request.stream.failed(status, time.perf_counter())
        request._over()

    def stray(self, request_id: str, kind: str | None) -> None:
        """A message for a request id this session never started."""

    def late(self, request: Request, kind: str | None, seq: int) -> None:
        """A message after `request`'s terminal (its stream has the problem too)."""

    # -- the reader --

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._route(response, time.perf_counter())
            self.final = Status(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            self.final = status_of_call(error)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self.final = Status(grpc.StatusCode.CANCELLED)  # our own cancel, or our channel closed
        finally:
            now = time.perf_counter()
            final = self.final or Status(grpc.StatusCode.CANCELLED)
            for request in self.requests.values():
                if request.done.is_set():
                    continue
                if final.code is grpc.StatusCode.OK:
                    request.stream.closed(now)
                else:
                    request.stream.failed(final, now)
                request._over()

    def _route(self, response: pb.SessionResponse, now: float) -> None:
        kind = response.WhichOneof("kind")
        if kind == "rejected":
            self.rejected(response.request_id, response.seq, status_of(response.rejected))
            return
        request = self.requests.get(response.request_id)
        if request is None:
            self.stray(response.request_id, kind)
            return
        stream = request.stream
        if stream.terminal is not None:
            self.late(request, kind, response.seq)
        before = stream.terminal
        stream.feed(response, now)
        if request.messages is not None:
            request.messages.put_nowait(response)
        if kind == "token_delta" or kind == "audio_chunk":
            if not request.has_output.is_set():
                request.has_output.set()
                self.first_output.set()
        elif before is None and stream.terminal is not None:
            self._terminals += 1
            request.terminal_order = self._terminals
            request._over()
