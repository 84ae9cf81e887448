"""Typed per-request streams, and their two sources: a one-shot call, or a session request's inbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, Self, TypeVar

import grpc

from rillet.client import _convert, _tracing
from rillet.client._closing import Closing
from rillet.client._errors import (
    IncompleteOutputError,
    ProtocolError,
    RequestCancelledError,
    RilletError,
    error_from_rpc,
)
from rillet.client._inbox import Inbox
from rillet.client._types import (
    AudioChunk,
    Finished,
    FinishReason,
    GenerateResult,
    SpokenText,
    SynthesizeResult,
    TokenDelta,
    WordTiming,
)
from rillet.v1 import inference_service_pb2

E = TypeVar("E", TokenDelta, AudioChunk)
Send = Callable[[inference_service_pb2.SessionRequest], Awaitable[None]]
Interrupt = Callable[[int], Awaitable[None]]
"""Sends a synthesis's Cancel with the samples played, then cancels the generation it speaks (if any)."""


class JsonModel(Protocol):
    """A class that validates JSON text into an instance, as a pydantic model does (`model_validate_json`)."""

    @classmethod
    def model_validate_json(cls, json_data: str, /) -> Self: ...


M = TypeVar("M", bound=JsonModel)


class RequestStream(Closing, Generic[E]):
    """The outputs of one request: iterate it for deltas or chunks, then one Finished; errors are raised.

    `aclose()` ends it now: the request is cancelled on the server unless it already ended, and whatever the SDK
    holds for it is dropped. Leaving `async with` calls it; so does leaving the `async for` early, once the
    abandoned iterator is finalized. Iterate it once.
    """

    def __init__(
        self,
        request_id: str,
        source: AsyncIterator[E | Finished],
        cancel: Callable[[], Awaitable[None]],
        inbox: Inbox | None = None,
    ) -> None:
        self.request_id = request_id
        self.finished: Finished | None = None
        self._source: AsyncIterator[E | Finished] = source
        self._cancel = cancel
        self._inbox = inbox
        self._ended = False
        self._iterated = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes of this request's outputs that arrived and were not yet iterated.

        At most the session's `request_buffer_bytes` plus one message; always 0 for a one-shot call, which reads from
        the call only as it is iterated.
        """
        return self._inbox.buffered_bytes if self._inbox is not None else 0

    def __aiter__(self) -> AsyncIterator[E | Finished]:
        if self._iterated:
            raise RuntimeError("a RequestStream can be iterated only once")
        self._iterated = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[E | Finished]:
        try:
            async for item in self._source:
                if isinstance(item, Finished):
                    self.finished = item
                    self._ended = True
                else:
                    self._seen(item)
                yield item
        except RilletError:
            self._ended = True
            raise
        finally:
            await self.aclose()

    def _seen(self, item: E) -> None:
        """An output on its way to the caller."""

    async def aclose(self) -> None:
        """End it now: cancel the request unless it already ended, and drop what the SDK holds for it."""
        if not self._ended:
            self._ended = True
            await self._cancel()
        if self._inbox is not None:
            self._inbox.discard()


class GenerateStream(RequestStream[TokenDelta]):
    """The token deltas of one generation request, then its Finished."""

    def __init__(
        self,
        request_id: str,
        source: AsyncIterator[TokenDelta | Finished],
        cancel: Callable[[], Awaitable[None]],
        inbox: Inbox | None = None,
    ) -> None:
        super().__init__(request_id, source, cancel, inbox)
        self._text: list[str] = []

    @property
    def text(self) -> str:
        """The text iterated so far."""
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

    def _seen(self, item: TokenDelta) -> None:
        self._text.append(item.text)

    async def collect(self) -> GenerateResult:
        """Consume the stream and return the whole text."""
        text: list[str] = []
        ids: list[int] = []
        async for item in self:
            if isinstance(item, TokenDelta):
                text.append(item.text)
                ids.extend(item.token_ids)
        assert self.finished is not None
        return GenerateResult("".join(text), tuple(ids), self.finished)

    async def parse(self, model: type[M]) -> M:
        """Consume the stream and validate its text into `model` (a pydantic model class, or any JsonModel).

        For a request with a `json_schema` (`json_schema=Model` asks for exactly this model's schema): raises
        IncompleteOutputError when the output ended before the constraint accepted it (LENGTH, STOP_SEQUENCE), and
        lets the model's own validation error through when the text is not valid for it.
        """
        result = await self.collect()
        if result.finished.reason is not FinishReason.STOP:
            raise IncompleteOutputError(result)
        return model.model_validate_json(result.text)


class SynthesizeStream(RequestStream[AudioChunk]):
    """The audio chunks of one synthesis request, then its Finished."""

    def __init__(
        self,
        request_id: str,
        source: AsyncIterator[AudioChunk | Finished],
        cancel: Callable[[], Awaitable[None]],
        inbox: Inbox | None = None,
        send: Send | None = None,
        *,
        interrupt: Interrupt | None = None,
        text: str | Callable[[], str] = "",
    ) -> None:
        super().__init__(request_id, source, cancel, inbox)
        self._send = send
        self._interrupt = interrupt
        self._text = text  # what it speaks, as far as the SDK knows it: sent, or a generation's, as iterated
        self._words: list[WordTiming] = []
        self._received = 0  # samples iterated

    def _seen(self, item: AudioChunk) -> None:
        self._words.extend(item.words)
        self._received = item.offset_samples + item.samples

    async def interrupt(self, played_samples: int) -> SpokenText | None:
        """Barge-in: stop this synthesis, and the generation it speaks, and return what the listener heard.

        `played_samples`: how much of this request's audio was played (at its chunks' rate). While the server still
        synthesizes, it is told (Cancel.played_samples) and answers with the text through the last word played in
        full (`Finished.spoken`; the generation's Finished says the same, in its text). Once the synthesis has
        finished, the SDK works it out the same way from the word timings it received, when the request asked for
        them (`word_timings=True`), with the text it knows (what it sent, or the generation's as iterated); else
        None. The audio still on its way is dropped; the Finished still reaches an iteration of the stream. Call it
        from any task, whether or not another one iterates the stream.
        """
        if played_samples < 0:
            raise ValueError("played_samples must not be negative")
        if self._interrupt is None or self._inbox is None:
            raise RuntimeError("only session requests can be interrupted; close a one-shot stream instead")
        if not self._ended:
            self._ended = True  # the server ends it now: nothing else may cancel it without the samples played
            await self._interrupt(played_samples)
        self._inbox.discard()  # the audio still on its way will not be played
        terminal = await self._inbox.terminal()
        if isinstance(terminal, Finished):
            self.finished = terminal
            if terminal.spoken is not None:
                return terminal.spoken
        return self._heard(played_samples)

    def _heard(self, played_samples: int) -> SpokenText | None:
        if not self._words:
            return None
        played = min(played_samples, self._received)
        heard = [word for word in self._words if word.end_sample <= played]
        if not heard:
            return SpokenText("", 0, 0, played)
        start, end = heard[0].start_char, heard[-1].end_char
        text = self._text() if callable(self._text) else self._text
        return SpokenText(text[start:end], start, end, played)

    async def append_text(self, text: str) -> None:
        """Send more input text (streaming-input requests started in a session)."""
        if isinstance(self._text, str):
            self._text += text
        await self._session_send()(
            inference_service_pb2.SessionRequest(
                request_id=self.request_id, append_text=inference_service_pb2.AppendText(text=text)
            )
        )

    async def end_input(self) -> None:
        """Mark the input complete; the rest is synthesized and the request finishes."""
        await self._session_send()(
            inference_service_pb2.SessionRequest(request_id=self.request_id, end_input=inference_service_pb2.EndInput())
        )

    def _session_send(self) -> Send:
        if self._send is None:
            raise RuntimeError("only session requests started with streaming_input=True take more text")
        return self._send

    async def collect(self) -> SynthesizeResult:
        """Consume the stream and return the whole audio."""
        pcm = bytearray()
        rate, channels = 0, 1
        async for item in self:
            if isinstance(item, AudioChunk):
                pcm += item.audio
                rate, channels = item.sample_rate_hertz, item.channel_count
        assert self.finished is not None
        return SynthesizeResult(bytes(pcm), rate, channels, self.finished)


def check_seq(request_id: str, expected: int, seq: int) -> None:
    """Each request's messages are numbered 0, 1, 2, ... without a gap; anything else breaks the contract."""
    if seq != expected:
        raise ProtocolError(f"request {request_id!r}: expected seq {expected}, got {seq}", request_id=request_id)


async def one_shot(
    call: grpc.aio.UnaryStreamCall[Any, Any],
    convert: Callable[[Any], E],
    output_field: str,
    trace: _tracing.CallTrace,
) -> AsyncIterator[E | Finished]:
    """The items of a one-shot call, read from the call only as they are iterated (gRPC's flow control bounds it)."""
    expected = 0
    status = "CANCELLED"  # left early: the stream is cancelled
    try:
        async for response in call:
            check_seq("", expected, response.seq)
            expected += 1
            kind = response.WhichOneof("kind")
            if kind == output_field:
                yield convert(getattr(response, output_field))
            elif kind == "finished":
                status = "OK"
                yield _convert.finished(response.finished)
                return
            else:
                raise ProtocolError(f"unexpected message kind {kind!r}")
    except grpc.aio.AioRpcError as error:
        status = error.code().name
        raise error_from_rpc(error) from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if call.cancelled() and task is not None and not task.cancelling():  # the call, not this task
            raise RequestCancelledError("the call was cancelled: its client or stream was closed") from None
        raise
    finally:
        trace.end(status)
    raise ProtocolError("the stream ended without a finished message")


async def from_inbox(request_id: str, inbox: Inbox, output: type[E]) -> AsyncIterator[E | Finished]:
    """The items of a session request, taken from its inbox as they are iterated."""
    while True:
        item = await inbox.get()
        if isinstance(item, RilletError):
            raise item
        if not isinstance(item, output | Finished):
            raise ProtocolError(f"request {request_id!r} received a {type(item).__name__}", request_id=request_id)
        yield item
        if isinstance(item, Finished):
            return
