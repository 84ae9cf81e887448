"""One client session: a reader, a writer and a watchdog over a table of requests, each streamed in order."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext
from typing import Protocol

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
from rillet.server.observer import NULL_OBSERVER, Observer
from rillet.server.reasons import Reason
from rillet.server.scheduler import Job, Router, SpeechJob, TextJob
from rillet.server.session.lifecycle import Lifecycle
from rillet.server.session.outbox import OutboundBudget, Outbox
from rillet.server.session.request import CancelReason, Request
from rillet.server.session.text import TextChain, TextInput
from rillet.server.session.watchdog import Watchdog
from rillet.server.types import (
    AppendText,
    Cancel,
    Command,
    EndInput,
    EngineFinished,
    Failed,
    GenerateSpec,
    Malformed,
    Output,
    Rejected,
    Start,
)
from rillet.server.validation import (
    validate_generate,
    validate_request_id,
    validate_synthesize,
    validate_text_piece,
)

log = logging.getLogger(__name__)

ENDED_SOURCES = 16
"""Ended generations a session keeps for `text_from_request_id`: a client sends a generation's start and its chained
synthesis's together, and a short generation may end (and its Finished be sent) before the session reads the second
one. The synthesis then speaks its whole text. The newest such generations are kept, each with the text it made."""


class RequestQuota(Protocol):
    """A tenant's share of the server, as one session sees it."""

    @property
    def tenant(self) -> str:
        """The tenant's name ("" when authentication is off)."""
        ...

    @property
    def cache_scope(self) -> str:
        """Whose cached prompts the tenant's requests may reuse (GenerationRequest.cache_scope)."""
        ...

    def start_request(self) -> None:
        """Count a request in flight; raises ResourceExhausted when the tenant is at its limit."""
        ...

    def end_request(self) -> None:
        """A request counted by `start_request` left the session."""
        ...


def _time_limit(seconds: float | None) -> AbstractAsyncContextManager[object]:
    """asyncio.timeout(seconds); with no limit (most requests), nothing at all: no Timeout, no loop lookups."""
    return asyncio.timeout(seconds) if seconds is not None else nullcontext()


def _rejection_size(output: Output) -> int:
    assert isinstance(output.payload, Rejected)
    error = output.payload.error
    return len(output.request_id) + len(error.message) + sum(len(k) + len(v) for k, v in error.metadata.items()) + 64


class Session:
    """Multiplexes the requests of one call. `run` consumes commands and yields outputs until the call ends.

    The parts, each the owner of one invariant: the reader (`_read`) turns commands into requests; each request's
    Outbox numbers and bounds its outputs; the OutboundBudget bounds the session (a full budget stops the reader,
    so gRPC flow control pushes back on the client); the Watchdog ends stalled requests; the TextChain feeds a
    generation into the syntheses that speak it; the writer (`run`) is the only consumer of outputs.

    Invariants:
    - Each started request gets exactly one terminal output (Finished or Failed), after all its other outputs.
    - A request id leaves the table only when its terminal output was delivered, so a new request reusing the id
      can never interleave with the old one's messages.
    - When `run` exits for any reason, every request task is cancelled and awaited, which closes its engine
      stream and so frees what the engine held.
    - A Rejected output names the client message it answers by its index among the commands `run` consumed: the
      transports turn every client message into exactly one command (a message they cannot read into Malformed),
      so the index is the client's own count of the messages it sent.
    """

    def __init__(
        self,
        router: Router,
        limits: LimitsConfig,
        lifecycle: Lifecycle,
        *,
        observer: Observer = NULL_OBSERVER,
        quota: RequestQuota | None = None,
    ) -> None:
        self._router = router
        self._limits = limits
        self._lifecycle = lifecycle
        self._observer = observer
        self._quota = quota
        self._tenant = quota.tenant if quota is not None else ""  # its share of each engine's queue is bounded
        self._cache_scope = quota.cache_scope if quota is not None else ""
        self._requests: dict[str, Request] = {}
        self._ended_sources: collections.OrderedDict[str, Request] = collections.OrderedDict()  # see ENDED_SOURCES
        self._quota_holders: set[Request] = set()
        self._budget = OutboundBudget(limits.max_session_buffer_bytes)
        self._ready: asyncio.Queue[Outbox | Output | None] = asyncio.Queue()
        self._input_closed = False
        self._watchdog = Watchdog(limits.stall_timeout_s, limits.input_idle_timeout_s, self._requests.values)

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def wake(self) -> None:
        """Make the writer re-check whether the session should end."""
        self._ready.put_nowait(None)

    def sweep(self, now: float) -> None:
        """Cancel the requests whose client stopped reading or whose input went idle (Lifecycle.watch calls it)."""
        self._watchdog.sweep(now)

    def shutdown(self) -> None:
        for request in list(self._requests.values()):
            request.cancel(CancelReason.SHUTDOWN)
        self.wake()

    async def run(self, commands: AsyncIterator[Command]) -> AsyncIterator[Output]:
        """Serve the session until the client half-closed and every request finished.

        Raises Unavailable when the server drains while the client still may send requests.
        """
        self._lifecycle.register(self)
        reader = asyncio.create_task(self._read(commands))
        reader.add_done_callback(self._input_ended)
        async for output in self._write(reader):
            yield output

    def run_one(self, start: Start) -> AsyncIterator[Output]:
        """Serve a single request (the one-shot RPCs): its outputs; its failure is raised instead of yielded.

        The start is applied at once, before the first output is asked for, with no reader task (nothing more will
        come): its engine stream begins one event-loop turn sooner than a session's request does, which is idle
        time to first output saved. A start refused outright raises here.
        """
        self._lifecycle.register(self)
        self._input_closed = True
        try:
            error = self._dispatch(start)  # a request's task is the last thing it creates: on a raise, none runs
            if error is not None:
                self._observer.rejected(error)
                raise error
        except BaseException:
            self._lifecycle.unregister(self)  # nothing started: nothing else to clean up
            raise
        return self._write(None)

    async def _write(self, reader: asyncio.Task[None] | None) -> AsyncIterator[Output]:
        """Yield outputs as they become ready until the session ends; `reader` applies the client's commands.

        Without a reader (one request, `run_one`), a request's failure is raised instead of yielded.
        """
        try:
            while True:
                if not self._requests and self._ready.empty():
                    if self._input_closed:
                        break  # half-closed and all done: OK, even while draining (nothing was cut short)
                    if self._lifecycle.draining:
                        raise Unavailable(
                            "the server is shutting down; reconnect to another instance", reason=Reason.SHUTTING_DOWN
                        )
                item = await self._ready.get()
                if item is None:
                    if reader is not None and reader.done() and not reader.cancelled() and reader.exception():
                        raise reader.exception()  # type: ignore[misc]
                    continue
                if isinstance(item, Output):
                    yield item
                    self._budget.release(_rejection_size(item))
                    continue
                for output in item.take():
                    if reader is None and isinstance(output.payload, Failed):
                        raise output.payload.error
                    yield output
                    item.sent += 1  # the transport took it: the client is reading (the stall clock's progress)
                item.delivered()
                request = self._requests.get(item.request_id)
                if item.done and request is not None and request.outbox is item:
                    self._forget(request)
        finally:
            if reader is not None:
                reader.cancel()
            requests = list(self._requests.values())
            for request in requests:
                request.cancel(CancelReason.GONE)
            tasks = [task for task in (reader, *(r.task for r in requests)) if task is not None]
            if tasks:
                # The call may be cancelled again while we wait here: the shield keeps the clean-up going, and the
                # session leaves the lifecycle only once every engine stream has really been closed.
                cleanup = asyncio.gather(*tasks, return_exceptions=True)
                cleanup.add_done_callback(lambda _: self._closed(requests))
                await asyncio.shield(cleanup)
            else:
                self._closed(requests)

    def _closed(self, requests: list[Request]) -> None:
        for request in requests:
            request.outbox.close()
            self._forget(request)
        self._lifecycle.unregister(self)

    def _forget(self, request: Request) -> None:
        if self._requests.get(request.request_id) is request:
            del self._requests[request.request_id]
            if request.chain is not None and not self._input_closed:  # a chained start may still come for it
                self._ended_sources[request.request_id] = request
                self._ended_sources.move_to_end(request.request_id)
                while len(self._ended_sources) > ENDED_SOURCES:
                    self._ended_sources.popitem(last=False)
        if request in self._quota_holders and self._quota is not None:
            self._quota_holders.discard(request)
            self._quota.end_request()
        self._lifecycle.requests.release(self._tenant, request)

    async def _read(self, commands: AsyncIterator[Command]) -> None:
        index = 0  # of the client message each command is (the transports make exactly one of each)
        async for command in commands:
            error = self._dispatch(command)
            if error is not None:
                await self._reject(command.request_id, index, error)
            index += 1

    def _input_ended(self, reader: asyncio.Task[None]) -> None:
        self._input_closed = True
        for request in self._requests.values():
            if request.input is not None and request.input.streaming:
                request.input.end()  # half-close ends every open streaming input
        self.wake()  # runs once the reader task is done, so the writer sees how it ended

    def _dispatch(self, command: Command) -> RilletError | None:
        """Apply one command; returns the error to answer with `rejected` when it changes nothing."""
        if isinstance(command, Start):
            return self._start(command)
        if isinstance(command, Malformed):
            return command.error
        request = self._requests.get(command.request_id)
        if request is None:
            return NotFound(
                f"no request {command.request_id!r} is in flight in this session", reason=Reason.UNKNOWN_REQUEST_ID
            )
        if isinstance(command, Cancel):
            if command.played_samples is not None:
                if request.input is None:
                    return InvalidArgument(
                        "played_samples is for synthesize requests: cancel the synthesis that played",
                        field="cancel.played_samples",
                        reason=Reason.NOT_A_SYNTHESIS,
                    )
                request.hear(command.played_samples)
            request.cancel(CancelReason.CLIENT)  # a request already ending just sends its terminal output
            return None
        return self._append(command, request)

    def _append(self, command: AppendText | EndInput, request: Request) -> RilletError | None:
        text_input = request.input
        if text_input is None or not text_input.streaming:
            return InvalidArgument(
                f"request {command.request_id!r} is not a streaming-input synthesize request",
                reason=Reason.NOT_STREAMING_INPUT,
            )
        if text_input.ended:
            return InvalidArgument(
                f"the input of request {command.request_id!r} has already ended", reason=Reason.INPUT_ENDED
            )
        if isinstance(command, EndInput):
            text_input.end()
            return None
        try:
            validate_text_piece(command.text, self._limits)
        except RilletError as error:
            return error
        if text_input.chars + len(command.text) > self._limits.max_synthesis_chars:
            return InvalidArgument(
                f"request {command.request_id!r} would exceed {self._limits.max_synthesis_chars} characters",
                reason=Reason.TEXT_TOO_LARGE,
            )
        else:
            text_input.feed(command.text)
        return None

    def _start(self, command: Start) -> RilletError | None:
        try:
            validate_request_id(command.request_id, self._limits)
        except RilletError as error:
            return error
        if command.request_id in self._requests:
            return AlreadyExists(f"request {command.request_id!r} is already in flight in this session")
        outbox = Outbox(command.request_id, self._budget, self._limits.max_request_buffer_bytes, self._ready.put_nowait)
        request = Request(command.request_id, outbox, self._observer.request(command))
        self._requests[command.request_id] = request
        try:
            if self._lifecycle.draining:
                raise Unavailable(
                    "the server is shutting down; send new requests to another instance", reason=Reason.SHUTTING_DOWN
                )
            if len(self._requests) > self._limits.max_requests_per_session:
                raise ResourceExhausted(
                    f"more than {self._limits.max_requests_per_session} requests in flight on this session",
                    retry_after=1.0,
                    reason=Reason.TOO_MANY_REQUESTS_IN_SESSION,
                )
            job = self._prepare(command, request)
            if self._quota is not None:
                self._quota.start_request()
                self._quota_holders.add(request)
        except RilletError as error:
            request.fail(error)
            return None
        source = request.source.observer if request.source is not None else None
        request.observer.queued(job.route.model, job.request, source)
        request.task = asyncio.create_task(self._pump(request, job, command.timeout_s))
        self._lifecycle.requests.add(self._tenant, request)
        return None

    def _prepare(self, command: Start, request: Request) -> Job:
        spec = command.spec
        if isinstance(spec, GenerateSpec):
            if not self._input_closed:  # a later request of this session may speak it: keep its text for that
                request.chain = TextChain()
            validated = validate_generate(
                command.request_id, spec, self._limits, self._router, self._cache_scope, command.trace
            )
            return TextJob(*validated)
        text_input = TextInput(streaming=spec.streaming_input)
        job = SpeechJob(*validate_synthesize(command.request_id, spec, text_input.pieces(), self._limits, self._router))
        request.input = text_input
        request.transcript = job.transcript if job.route.model.word_timings else None
        text_input.feed(spec.text)
        if spec.text_from_request_id:
            source = self._source(spec.text_from_request_id)
            request.source = source
            assert source.chain is not None  # _source checked it is a generation
            source.chain.follow(text_input, on_lost=lambda: request.cancel(CancelReason.UPSTREAM))
        elif not spec.streaming_input:
            text_input.end()
        return job

    def _source(self, request_id: str) -> Request:
        """The generation request a synthesize request speaks: in flight in this session, or one of its last ended."""
        source = self._requests.get(request_id) or self._ended_sources.get(request_id)
        if source is None:
            raise NotFound(
                f"no generation {request_id!r} is in flight in this session, nor among its last {ENDED_SOURCES} ended, "
                "to take text from",
                reason=Reason.UNKNOWN_SOURCE_REQUEST,
                metadata={"source_request_id": request_id},
            )
        if source.chain is None:
            raise InvalidArgument(
                f"request {request_id!r} is not a generation request",
                field="text_from_request_id",
                reason=Reason.SOURCE_NOT_GENERATE,
            )
        if source.chain.closed and not source.chain.complete:
            raise InvalidArgument(
                f"request {request_id!r} was cancelled or failed",
                field="text_from_request_id",
                reason=Reason.SOURCE_ENDED,
            )
        return source

    async def _pump(self, request: Request, job: Job, timeout_s: float | None) -> None:
        """Run the request through admission and its engine, handing outputs to its outbox."""
        route = job.route
        try:
            async with _time_limit(timeout_s), route.admission.admit(self._tenant, job.request.priority):
                request.admit()
                async with aclosing(job.stream()) as events:
                    async for event in events:
                        if isinstance(event, EngineFinished):
                            request.finish(event)
                            return
                        await request.put(event)
            raise Internal(
                f"engine {route.engine.name!r} ended a stream without finishing it", reason=Reason.ENGINE_STREAM_ENDED
            )
        except asyncio.CancelledError:
            if request.cancel_reason is None:
                raise
            request.cancelled()
            if request.cancel_reason is CancelReason.GONE:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except TimeoutError:
            request.fail(DeadlineExceeded(f"the request did not finish within its timeout of {timeout_s:g}s"))
        except EngineDead as error:
            request.fail(error)
            self._lifecycle.on_engine_dead()
        except RilletError as error:
            request.fail(error)
        except Exception as error:  # a bug or engine failure: this request fails, the session goes on
            log.exception("request %s failed in engine %s", request.request_id, route.engine.name)
            request.fail(Internal(f"the engine failed: {type(error).__name__}", reason=Reason.ENGINE_REQUEST_FAILED))
        finally:
            route.throughput.ended(request.output_tokens, request.input.chars if request.input is not None else 0)

    async def _reject(self, request_id: str, message_index: int, error: RilletError) -> None:
        """Answer client message `message_index` with `rejected`; waits (stops reading) while the budget is full."""
        self._observer.rejected(error)
        output = Output(request_id, 0, Rejected(error, message_index))
        await self._budget.wait_for_space()
        self._budget.add(_rejection_size(output))
        self._ready.put_nowait(output)
