"""One client session: many requests at once, each streamed in order, cancelled and cleaned up reliably."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from rillet.server.config import LimitsConfig
from rillet.server.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngineDead,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RilletError,
    Unavailable,
)
from rillet.server.scheduler import Route, Router
from rillet.server.types import (
    AudioChunk,
    Cancel,
    Command,
    EndInput,
    EngineFinished,
    EngineRequest,
    Failed,
    Finished,
    FinishReason,
    GenerateSpec,
    Malformed,
    Output,
    Rejected,
    Start,
    Timings,
    TokenDelta,
    Usage,
)
from rillet.server.validation import validate_generate, validate_request_id, validate_synthesize

log = logging.getLogger(__name__)

MAX_BUFFERED_AUDIO_CHUNKS = 8
"""Audio chunks a request may have waiting for the client before its engine stream is paused."""


class _CancelReason(enum.Enum):
    CLIENT = "client"  # a Cancel message: the request ends with FINISH_REASON_CANCELLED
    UPSTREAM = "upstream"  # the request it took its text from was cancelled or failed: FINISH_REASON_CANCELLED
    SHUTDOWN = "shutdown"  # the drain grace period ran out: the request fails with UNAVAILABLE
    GONE = "gone"  # the call ended: nobody is listening, nothing is sent
    STALLED = "stalled"  # the client stopped reading: the request fails with DEADLINE_EXCEEDED (CLIENT_STALLED)


class Lifecycle:
    """Server-wide state that sessions consult: whether the server drains, and which sessions are open."""

    def __init__(self, on_engine_dead: Callable[[], None] = lambda: None) -> None:
        self.draining = False
        self.on_engine_dead = on_engine_dead
        self._sessions: set[Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def in_flight(self) -> int:
        """Requests in flight across all sessions."""
        return sum(s.in_flight for s in self._sessions)

    def begin_drain(self) -> None:
        """Refuse new sessions and requests; idle sessions end now, busy ones when their requests finish."""
        self.draining = True
        for session in list(self._sessions):
            session.wake()

    async def wait_drained(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for every session to end; True when they all did."""
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cancel_all(self) -> None:
        """Fail every request still in flight with UNAVAILABLE (the grace period is over)."""
        for session in list(self._sessions):
            session.shutdown()

    def register(self, session: Session) -> None:
        self._sessions.add(session)
        self._idle.clear()

    def unregister(self, session: Session) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._idle.set()


class _Request:
    """The state of one request of a session, from its start message to its terminal output."""

    def __init__(self, request_id: str, ready: asyncio.Queue[_Request | Output | None]) -> None:
        self.request_id = request_id
        self.arrival = time.perf_counter()
        self.admitted: float | None = None
        self.first_output: float | None = None
        self.seq = 0
        self.delta: TokenDelta | None = None
        self.audio: collections.deque[AudioChunk] = collections.deque()
        self.terminal: EngineFinished | Failed | None = None
        self.emitted_terminal = False
        self.output_tokens = 0
        self.output_audio_seconds = 0.0
        self.cancel_reason: _CancelReason | None = None
        self.task: asyncio.Task[None] | None = None
        # Generation requests: their text so far, and the synthesize requests speaking it as it comes.
        self.text_so_far: list[str] = []
        self.dependents: list[_Request] = []
        self.source: _Request | None = None
        # Synthesize requests: input text pieces for the engine (None ends the input).
        self.input: asyncio.Queue[str | None] | None = None
        self.accepts_appends = False
        self.input_ended = False
        self.input_chars = 0
        self._ready = ready
        self._queued = False
        self._space = asyncio.Event()

    @property
    def is_generation(self) -> bool:
        return self.input is None

    def cancel(self, reason: _CancelReason) -> None:
        if self.task is not None and not self.task.done() and self.cancel_reason is None:
            self.cancel_reason = reason
            self.task.cancel()

    def feed(self, text: str) -> None:
        """Add input text (synthesize requests)."""
        if self.input is not None and not self.input_ended and text:
            self.input_chars += len(text)
            self.input.put_nowait(text)

    def end_input(self) -> None:
        if self.input is not None and not self.input_ended:
            self.input_ended = True
            self.input.put_nowait(None)

    def follow(self, source: _Request) -> None:
        """Speak `source`'s generated text: what exists now, then every delta as it is generated."""
        self.source = source
        for text in source.text_so_far:
            self.feed(text)
        if source.terminal is None:
            source.dependents.append(self)
        else:
            self.end_input()

    async def push(self, event: TokenDelta | AudioChunk) -> None:
        """Hand an output to the writer. Token deltas coalesce while the writer is behind; audio waits for space."""
        if isinstance(event, TokenDelta):
            if not event.text and not event.token_ids:
                return
            self.output_tokens += len(event.token_ids)
            if event.text:
                self.text_so_far.append(event.text)
                for dependent in self.dependents:
                    dependent.feed(event.text)
            self.delta = event if self.delta is None else self.delta.merge(event)
            self._signal()
            return
        self.output_audio_seconds += event.samples / event.sample_rate_hertz
        self.audio.append(event)
        self._signal()
        while len(self.audio) >= MAX_BUFFERED_AUDIO_CHUNKS:
            self._space.clear()
            await self._space.wait()

    def usage_so_far(self) -> Usage:
        """What was produced before a cancellation."""
        return Usage(output_tokens=self.output_tokens, output_audio_seconds=self.output_audio_seconds)

    def end(self, terminal: EngineFinished | Failed) -> None:
        if self.terminal is not None:
            return
        self.terminal = terminal
        self._signal()
        complete = isinstance(terminal, EngineFinished) and terminal.reason is not FinishReason.CANCELLED
        for dependent in self.dependents:
            if complete:
                dependent.end_input()
            else:
                dependent.cancel(_CancelReason.UPSTREAM)
        self.dependents.clear()
        if self.source is not None and self in self.source.dependents:
            self.source.dependents.remove(self)

    def drain(self) -> list[Output]:
        """Everything ready to send, in order, with contiguous sequence numbers. Called by the writer only."""
        self._queued = False
        payloads: list[TokenDelta | AudioChunk | Finished | Failed] = []
        if self.delta is not None:
            payloads.append(self.delta)
            self.delta = None
        while self.audio:
            payloads.append(self.audio.popleft())
        self._space.set()
        now = time.perf_counter()
        if payloads and self.first_output is None:
            self.first_output = now
        if self.terminal is not None and not self.emitted_terminal:
            self.emitted_terminal = True
            payloads.append(
                self._finished(self.terminal, now) if isinstance(self.terminal, EngineFinished) else self.terminal
            )
        outputs = [Output(self.request_id, self.seq + i, p) for i, p in enumerate(payloads)]
        self.seq += len(outputs)
        return outputs

    def _finished(self, event: EngineFinished, now: float) -> Finished:
        queue = (self.admitted if self.admitted is not None else now) - self.arrival
        ttfo = None if self.first_output is None else self.first_output - self.arrival
        timings = Timings(
            queue=queue, prefill=event.prefill_seconds, time_to_first_output=ttfo, total=now - self.arrival
        )
        return Finished(event.reason, event.usage, timings, event.stop_sequence)

    def _signal(self) -> None:
        if not self._queued:
            self._queued = True
            self._ready.put_nowait(self)


class Session:
    """Multiplexes the requests of one call. `run` consumes commands and yields outputs until the call ends.

    Invariants:
    - Each started request gets exactly one terminal output (Finished or Failed), after all its other outputs.
    - A request id leaves the table only when its terminal output is emitted, so a new request reusing the id
      can never interleave with the old one's messages.
    - When `run` exits for any reason, every request task is cancelled and awaited, which closes its engine
      stream and so frees what the engine held.
    """

    def __init__(self, router: Router, limits: LimitsConfig, lifecycle: Lifecycle) -> None:
        self._router = router
        self._limits = limits
        self._lifecycle = lifecycle
        self._requests: dict[str, _Request] = {}
        self._ready: asyncio.Queue[_Request | Output | None] = asyncio.Queue()
        self._input_closed = False
        self._writing_since: float | None = None  # set while an output waits for the transport to take it

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def wake(self) -> None:
        """Make the writer re-check whether the session should end."""
        self._ready.put_nowait(None)

    def shutdown(self) -> None:
        for request in list(self._requests.values()):
            request.cancel(_CancelReason.SHUTDOWN)
        self.wake()

    async def run(self, commands: AsyncIterator[Command]) -> AsyncIterator[Output]:
        """Serve the session until the client half-closed and every request finished.

        Raises Unavailable when the server drains.
        """
        self._lifecycle.register(self)
        reader = asyncio.create_task(self._read(commands))
        reader.add_done_callback(self._input_ended)
        watchdog = asyncio.create_task(self._watch_stalls()) if self._limits.stall_timeout_s else None
        try:
            while True:
                if not self._requests and self._ready.empty():
                    if self._lifecycle.draining:
                        raise Unavailable("the server is shutting down; reconnect to another instance")
                    if self._input_closed:
                        break
                item = await self._ready.get()
                if item is None:
                    if reader.done() and not reader.cancelled() and reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
                    continue
                if isinstance(item, Output):
                    yield item
                    continue
                for output in item.drain():
                    self._writing_since = time.monotonic()
                    yield output
                    self._writing_since = None
                if item.emitted_terminal and self._requests.get(item.request_id) is item:
                    del self._requests[item.request_id]
        finally:
            reader.cancel()
            if watchdog is not None:
                watchdog.cancel()
            tasks = [r.task for r in self._requests.values() if r.task is not None]
            for request in self._requests.values():
                request.cancel(_CancelReason.GONE)
            # The call may be cancelled again while we wait here: the shield keeps the clean-up going, and the
            # session leaves the lifecycle only once every engine stream has really been closed.
            cleanup = asyncio.gather(reader, *tasks, return_exceptions=True)
            cleanup.add_done_callback(lambda _: self._lifecycle.unregister(self))
            await asyncio.shield(cleanup)

    async def _watch_stalls(self) -> None:
        """Cancel every request when an output has waited `stall_timeout_s` for the client to take it.

        Only the time a ready output waits to be pulled counts, so a slow engine is never mistaken for a stalled
        client. The requests' engine streams close at once; their errors are sent if the client ever reads again.
        """
        limit = self._limits.stall_timeout_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            since = self._writing_since
            if since is not None and time.monotonic() - since > limit:
                log.warning("client stopped reading for %.1fs: cancelling %d requests", limit, len(self._requests))
                for request in list(self._requests.values()):
                    request.cancel(_CancelReason.STALLED)
                return

    async def run_one(self, start: Start) -> AsyncIterator[Output]:
        """Serve a single request (the one-shot RPCs). Its failure is raised instead of yielded."""

        async def one() -> AsyncIterator[Command]:
            yield start

        async for output in self.run(one()):
            if isinstance(output.payload, Failed | Rejected):
                raise output.payload.error
            yield output

    async def _read(self, commands: AsyncIterator[Command]) -> None:
        async for command in commands:
            self._dispatch(command)

    def _input_ended(self, reader: asyncio.Task[None]) -> None:
        self._input_closed = True
        for request in self._requests.values():
            if request.accepts_appends:
                request.end_input()  # half-close ends every open streaming input
        self.wake()  # runs once the reader task is done, so the writer sees how it ended

    def _dispatch(self, command: Command) -> None:
        if isinstance(command, Start):
            self._start(command)
            return
        if isinstance(command, Malformed):
            self._reject(command.request_id, command.error)
            return
        request = self._requests.get(command.request_id)
        if request is None:
            self._reject(
                command.request_id,
                NotFound(
                    f"no request {command.request_id!r} is in flight in this session", reason="UNKNOWN_REQUEST_ID"
                ),
            )
            return
        if isinstance(command, Cancel):
            request.cancel(_CancelReason.CLIENT)  # a request already ending just sends its terminal output
            return
        if not request.accepts_appends:
            self._reject(
                command.request_id,
                InvalidArgument(
                    f"request {command.request_id!r} is not a streaming-input synthesize request",
                    reason="NOT_STREAMING_INPUT",
                ),
            )
        elif request.input_ended:
            self._reject(
                command.request_id,
                InvalidArgument(f"the input of request {command.request_id!r} has already ended", reason="INPUT_ENDED"),
            )
        elif isinstance(command, EndInput):
            request.end_input()
        elif request.input_chars + len(command.text) > self._limits.max_synthesis_chars:
            self._reject(
                command.request_id,
                InvalidArgument(
                    f"request {command.request_id!r} would exceed {self._limits.max_synthesis_chars} characters",
                    reason="TEXT_TOO_LARGE",
                ),
            )
        else:
            request.feed(command.text)

    def _start(self, command: Start) -> None:
        try:
            validate_request_id(command.request_id, self._limits)
        except RilletError as error:
            self._reject(command.request_id, error)
            return
        if command.request_id in self._requests:
            self._reject(
                command.request_id,
                AlreadyExists(f"request {command.request_id!r} is already in flight in this session"),
            )
            return
        request = _Request(command.request_id, self._ready)
        self._requests[command.request_id] = request
        try:
            if self._lifecycle.draining:
                raise Unavailable("the server is shutting down; send new requests to another instance")
            if len(self._requests) > self._limits.max_requests_per_session:
                raise ResourceExhausted(
                    f"more than {self._limits.max_requests_per_session} requests in flight on this session",
                    retry_after=1.0,
                    reason="TOO_MANY_REQUESTS_IN_SESSION",
                )
            route, engine_request = self._prepare(command, request)
        except RilletError as error:
            request.end(Failed(error))
            return
        request.task = asyncio.create_task(self._pump(request, route, engine_request, command.timeout_s))

    def _prepare(self, command: Start, request: _Request) -> tuple[Route, EngineRequest]:
        spec = command.spec
        if isinstance(spec, GenerateSpec):
            return validate_generate(command.request_id, spec, self._limits, self._router)
        request.input = asyncio.Queue()
        route, engine_request = validate_synthesize(
            command.request_id, spec, _pieces(request.input), self._limits, self._router
        )
        request.feed(spec.text)
        if spec.text_from_request_id:
            request.follow(self._source(spec.text_from_request_id))
        elif spec.streaming_input:
            request.accepts_appends = True
        else:
            request.end_input()
        return route, engine_request

    def _source(self, request_id: str) -> _Request:
        """The generation request a synthesize request speaks; it must be in flight in this session."""
        source = self._requests.get(request_id)
        if source is None:
            raise NotFound(
                f"no request {request_id!r} is in flight in this session to take text from",
                reason="UNKNOWN_SOURCE_REQUEST",
                metadata={"source_request_id": request_id},
            )
        if not source.is_generation:
            raise InvalidArgument(
                f"request {request_id!r} is not a generation request",
                field="text_from_request_id",
                reason="SOURCE_NOT_GENERATE",
            )
        if isinstance(source.terminal, Failed) or (
            isinstance(source.terminal, EngineFinished) and source.terminal.reason is FinishReason.CANCELLED
        ):
            raise InvalidArgument(
                f"request {request_id!r} was cancelled or failed", field="text_from_request_id", reason="SOURCE_ENDED"
            )
        return source

    async def _pump(
        self, request: _Request, route: Route, engine_request: EngineRequest, timeout_s: float | None
    ) -> None:
        """Run the request through admission and its engine, handing outputs to the writer."""
        try:
            async with asyncio.timeout(timeout_s), route.admission.admit():
                request.admitted = time.perf_counter()
                async with aclosing(route.engine.stream(engine_request)) as events:
                    async for event in events:
                        if isinstance(event, EngineFinished):
                            request.end(event)
                            return
                        await request.push(event)
            raise Internal(f"engine {route.engine.name!r} ended a stream without finishing it")
        except asyncio.CancelledError:
            if request.cancel_reason in (None, _CancelReason.GONE):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if request.cancel_reason in (_CancelReason.CLIENT, _CancelReason.UPSTREAM):
                request.end(EngineFinished(FinishReason.CANCELLED, request.usage_so_far()))
            elif request.cancel_reason is _CancelReason.STALLED:
                stalled = self._limits.stall_timeout_s
                request.end(
                    Failed(DeadlineExceeded(f"the client read nothing for {stalled:g}s", reason="CLIENT_STALLED"))
                )
            else:
                request.end(Failed(Unavailable("the server shut down before the request finished")))
        except TimeoutError:
            request.end(Failed(DeadlineExceeded(f"the request did not finish within its timeout of {timeout_s:g}s")))
        except EngineDead as error:
            request.end(Failed(error))
            self._lifecycle.on_engine_dead()
        except RilletError as error:
            request.end(Failed(error))
        except Exception as error:  # a bug or engine failure: this request fails, the session goes on
            log.exception("request %s failed in engine %s", request.request_id, route.engine.name)
            request.end(Failed(Internal(f"the engine failed: {type(error).__name__}")))

    def _reject(self, request_id: str, error: RilletError) -> None:
        self._ready.put_nowait(Output(request_id, 0, Rejected(error)))


async def _pieces(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    """The text pieces of a synthesize request, until its input ends."""
    while (piece := await queue.get()) is not None:
        yield piece
