"""A multiplexed bidirectional session: one reader routes the call's messages into each request's bounded inbox."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, Unpack

import grpc

from rillet.client import _convert, _tracing
from rillet.client._closing import Closing
from rillet.client._errors import ProtocolError, RilletError, UnavailableError, error_from_rpc, error_from_status
from rillet.client._inbox import DEFAULT_LIMIT_BYTES, Inbox, Item, size
from rillet.client._options import (
    GenerateFields,
    GenerateOptions,
    Options,
    SynthesizeFields,
    SynthesizeOptions,
    resolve,
)
from rillet.client._streams import GenerateStream, RequestStream, SynthesizeStream, check_seq, from_inbox
from rillet.client._types import AudioChunk, TokenDelta
from rillet.v1 import inference_service_pb2

if TYPE_CHECKING:
    from rillet.client._convert import Prompt
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]

S = TypeVar("S", GenerateStream, SynthesizeStream)

_GENERATE = GenerateOptions()
_SYNTHESIZE = SynthesizeOptions()


@dataclass(slots=True)
class _Pending:
    """A request the server has not ended: where its messages go, the seq its next one must carry, and more.

    `start_index` is the index of the session message that started it: a `rejected` naming that index refused the
    start, and the request never ran.
    """

    inbox: Inbox
    next_seq: int = 0
    start_index: int = -1


class Session(Closing):
    """A multiplexed bidirectional session: many requests at once, each with its own stream.

    Start requests with `generate` and `synthesize`. `close()` finishes: no new requests, the ones in flight run to
    their end, then the call ends. `aclose()` ends now: the call is cancelled, and with it every request still
    running. Leaving `async with` calls `aclose()`.

    Flow control: the SDK holds at most `request_buffer_bytes` (plus one message) of each request's outputs that
    were not iterated yet. When a request's buffer is full, the session stops reading the call until that request
    is iterated, closed or dropped; HTTP/2 flow control then pushes back on the server for the whole session, whose
    other requests wait too (they share one stream). So iterate a session's requests concurrently (a task each), or
    `aclose()` the ones you will not read: a Rillet server fails a request whose output waits its stall timeout.

    `rejections` keeps the last server replies to client messages that could not be applied (e.g. a cancel that
    raced with the request's end); they never affect a request, except a refused start, whose stream raises it.
    Each names the message it answers by `client_message_index`: the session's messages are counted from 0 in the
    order it sent them (starts, cancels, appended texts, ends of input), as the server counts them.
    """

    def __init__(
        self,
        stub: InferenceServiceAsyncStub,
        *,
        timeout: float | None,
        metadata: Metadata,
        trace: _tracing.CallTrace | None = None,
        request_buffer_bytes: int = DEFAULT_LIMIT_BYTES,
    ) -> None:
        if request_buffer_bytes < 1:
            raise ValueError("request_buffer_bytes must be at least 1")
        self._trace = trace
        self._call = stub.Session(timeout=timeout, metadata=trace.metadata if trace is not None else metadata)
        self._buffer_bytes = request_buffer_bytes
        self._pending: dict[str, _Pending] = {}
        self._write_lock = asyncio.Lock()
        self._ids = itertools.count()
        self._sent = 0  # client messages written: the next one's index, as the server counts them
        self._failure: RilletError | None = None  # set once the call ended: new sends fail with it
        self._call_error: RilletError | None = None  # how the call failed, None when it ended with OK
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read())
        self.rejections: collections.deque[RilletError] = collections.deque(maxlen=32)

    async def aclose(self) -> None:
        """End now: cancel the session call; the server aborts every request still running."""
        self._call.cancel()
        self._reader.cancel()  # it may be waiting for room in an inbox rather than for the call
        await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        """Finish: no new requests; wait until the requests in flight finish and the server ends the call.

        Their streams must be iterated meanwhile (by other tasks) or closed, or the wait lasts as long as one of
        them is full. Raises how the call failed, if it did.
        """
        async with self._write_lock:
            await self._call.done_writing()
        await self._reader
        if self._call_error is not None:
            raise self._call_error

    async def generate(
        self,
        prompt: Prompt,
        options: GenerateOptions | None = None,
        *,
        request_id: str | None = None,
        **fields: Unpack[GenerateFields],
    ) -> GenerateStream:
        """Start a generation request in this session: `options` (or its fields as keywords; see GenerateOptions).

        `timeout` is this request's own limit; without a trace context, the caller's current one is sent.
        """
        options = _with_current_trace(resolve(options, _GENERATE, fields))
        rid = request_id or self._new_id()
        pending = self._register(rid)
        start = _convert.start_generate(prompt, options)
        await self._send(inference_service_pb2.SessionRequest(request_id=rid, start_generate=start), pending)
        inbox = pending.inbox
        stream = GenerateStream(rid, from_inbox(rid, inbox, TokenDelta), self._canceller(rid), inbox)
        return self._watch(stream, inbox)

    async def synthesize(
        self,
        text: str = "",
        options: SynthesizeOptions | None = None,
        *,
        streaming_input: bool = False,
        text_from: RequestStream[TokenDelta] | str | None = None,
        request_id: str | None = None,
        **fields: Unpack[SynthesizeFields],
    ) -> SynthesizeStream:
        """Start a synthesis request in this session: `options` (or its fields as keywords; see SynthesizeOptions).

        With `streaming_input`, send more text with `append_text` and finish with `end_input`. With `text_from` (a
        generate request of this session), the server speaks its tokens as they are generated. Timeout and trace
        context: as `generate`.
        """
        options = _with_current_trace(resolve(options, _SYNTHESIZE, fields))
        rid = request_id or self._new_id()
        pending = self._register(rid)
        inbox = pending.inbox
        source_id = text_from if isinstance(text_from, str) else text_from.request_id if text_from else ""
        start = _convert.start_synthesize(
            text, options, streaming_input=streaming_input, text_from_request_id=source_id
        )
        await self._send(inference_service_pb2.SessionRequest(request_id=rid, start_synthesize=start), pending)
        spoken: str | Callable[[], str] = text
        if isinstance(text_from, GenerateStream):
            spoken = functools.partial(getattr, text_from, "text")
        stream = SynthesizeStream(
            rid,
            from_inbox(rid, inbox, AudioChunk),
            self._canceller(rid),
            inbox,
            self._send,
            interrupt=self._interrupter(rid, source_id),
            text=spoken,
        )
        return self._watch(stream, inbox)

    async def cancel(self, request_id: str, *, played_samples: int | None = None) -> None:
        """Ask the server to cancel a request; it then ends with Finished(reason=CANCELLED).

        `played_samples` (synthesize requests): how much of its audio was played; its Finished then says what was
        heard (`Finished.spoken`). `SynthesizeStream.interrupt` does this and more.
        """
        cancel = inference_service_pb2.Cancel(played_samples=played_samples)
        await self._send(inference_service_pb2.SessionRequest(request_id=request_id, cancel=cancel))

    def _new_id(self) -> str:
        return f"r{next(self._ids)}"

    def _register(self, request_id: str) -> _Pending:
        if self._failure is not None:
            raise self._failure
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already in flight in this session")
        pending = self._pending[request_id] = _Pending(Inbox(self._buffer_bytes))
        return pending

    def _watch(self, stream: S, inbox: Inbox) -> S:
        """A stream dropped unread must not hold the session: its inbox is discarded when the stream is collected."""
        weakref.finalize(stream, _discard_soon, self._loop, inbox).atexit = False
        return stream

    def _interrupter(self, request_id: str, source_id: str) -> Callable[[int], Awaitable[None]]:
        async def interrupt(played_samples: int) -> None:
            for rid, played in ((request_id, played_samples), (source_id, None)):  # the synthesis first
                if rid in self._pending and self._failure is None and not self._call.done():
                    with contextlib.suppress(RilletError):  # the call is ending anyway; the server aborts all then
                        await self.cancel(rid, played_samples=played)

        return interrupt

    def _canceller(self, request_id: str) -> Callable[[], Awaitable[None]]:
        async def cancel() -> None:
            if request_id in self._pending and self._failure is None and not self._call.done():
                with contextlib.suppress(RilletError):  # the call is ending anyway; the server aborts all then
                    await self.cancel(request_id)

        return cancel

    async def _send(self, message: inference_service_pb2.SessionRequest, start: _Pending | None = None) -> None:
        """Write one client message; `start`, the request it starts, learns the message's index."""
        if self._failure is not None:
            raise self._failure
        try:
            async with self._write_lock:
                if start is not None:
                    start.start_index = self._sent  # before the write: its rejection may come back at once
                self._sent += 1
                await self._call.write(message)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        except asyncio.InvalidStateError:
            raise self._failure or UnavailableError("the session has ended") from None

    async def _read(self) -> None:
        """Route every message of the call to its request; wait whenever the request's inbox is full."""
        failure: RilletError | None = None
        try:
            async for response in self._call:
                inbox = self._dispatch(response)
                if inbox is not None and inbox.full:
                    await inbox.room()  # the call is not read meanwhile: flow control pushes back on the server
        except grpc.aio.AioRpcError as error:
            failure = error_from_rpc(error)
        except asyncio.CancelledError:
            failure = UnavailableError("the session was closed")
        except RilletError as error:
            failure = error
        if self._trace is not None:
            self._trace.end("OK" if failure is None else failure.code.name)
        self._call_error = failure
        self._failure = failure or UnavailableError("the session has ended")
        for pending in self._pending.values():
            pending.inbox.put(failure or UnavailableError("the session ended before the request finished"))
        self._pending.clear()

    def _refused_start(self, index: int) -> str | None:
        """The pending request that session message `index` started, or None (it was no start, or not pending)."""
        return next((rid for rid, pending in self._pending.items() if pending.start_index == index), None)

    def _dispatch(self, response: inference_service_pb2.SessionResponse) -> Inbox | None:
        """Deliver one message; the inbox of a request that is still running, else None."""
        rid = response.request_id
        kind = response.WhichOneof("kind")
        if kind == "rejected":
            # Matched by the message's index, never by its echoed id (clipped when long, empty when undecodable).
            index = response.client_message_index if response.HasField("client_message_index") else None
            refused = self._refused_start(index) if index is not None else None
            rejection = error_from_status(response.rejected, request_id=refused or rid, client_message_index=index)
            log.debug("server rejected a message: %s", rejection)
            self.rejections.append(rejection)
            if refused is not None:
                self._pending.pop(refused).inbox.put(rejection)  # its iterator raises instead of waiting
            return None
        pending = self._pending.get(rid)
        if pending is None:
            raise ProtocolError(f"a {kind} message for unknown request {rid!r}", request_id=rid)
        check_seq(rid, pending.next_seq, response.seq)
        pending.next_seq += 1
        item: Item
        if kind == "token_delta":
            item = _convert.token_delta(response.token_delta)
        elif kind == "audio_chunk":
            item = _convert.audio_chunk(response.audio_chunk)
        elif kind == "finished":
            item = _convert.finished(response.finished)
        elif kind == "error":
            item = error_from_status(response.error, request_id=rid)
        else:
            raise ProtocolError(f"unexpected message kind {kind!r}", request_id=rid)
        if isinstance(item, TokenDelta | AudioChunk):
            pending.inbox.put(item, size(item))
            return pending.inbox
        pending.inbox.put(item)
        del self._pending[rid]
        return None


def _with_current_trace(options: Options) -> Options:
    """`options`, carrying the caller's current trace context when they name none."""
    if options.traceparent:
        return options
    traceparent, tracestate = _tracing.request_context()
    return dataclasses.replace(options, traceparent=traceparent, tracestate=tracestate) if traceparent else options


def _discard_soon(loop: asyncio.AbstractEventLoop, inbox: Inbox) -> None:
    """Discard `inbox` on its loop (a finalizer may run on any thread); nothing to do once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(inbox.discard)
