"""One request of a session: its explicit state, why it was cancelled, and its outputs' way to the writer."""

from __future__ import annotations

import asyncio
import enum
import time

from rillet.server.audio.transcript import Transcript
from rillet.server.errors import DeadlineExceeded, RilletError, Unavailable
from rillet.server.observer import RequestObserver
from rillet.server.reasons import Reason
from rillet.server.session.outbox import Outbox
from rillet.server.session.text import TextChain, TextInput
from rillet.server.types import (
    AudioChunk,
    EngineFinished,
    Failed,
    Finished,
    FinishReason,
    SpokenText,
    Timings,
    TokenDelta,
    Usage,
)


class State(enum.Enum):
    """Where a request is; it only moves forward."""

    QUEUED = "queued"  # validated (or failing validation), waiting for an engine slot
    RUNNING = "running"  # holds a slot; its engine stream is open
    ENDED = "ended"  # its terminal output is set and waits in the outbox


class CancelReason(enum.Enum):
    """Why a request's task was cancelled, which decides its terminal output."""

    CLIENT = "client"  # a Cancel message: FINISH_REASON_CANCELLED
    ABORTED = "aborted"  # ControlService.Abort, from any call of the tenant: FINISH_REASON_CANCELLED
    UPSTREAM = "upstream"  # the generation it speaks was cancelled or failed: FINISH_REASON_CANCELLED
    GONE = "gone"  # the call ended: nobody is listening, nothing is sent
    SHUTDOWN = "shutdown"  # the drain grace period ran out: UNAVAILABLE
    STALLED = "stalled"  # the client stopped reading: DEADLINE_EXCEEDED (CLIENT_STALLED)
    INPUT_IDLE = "input_idle"  # a streaming input stopped coming: DEADLINE_EXCEEDED (INPUT_IDLE)


class Request:
    """The state of one request from its start message to its terminal output.

    Invariant: `end` runs once per request (later calls are ignored); it sets the terminal output, tells the
    observer, and settles the text chain in both directions.
    """

    def __init__(self, request_id: str, outbox: Outbox, observer: RequestObserver) -> None:
        self.request_id = request_id
        self.outbox = outbox
        self.observer = observer
        self.state = State.QUEUED
        self.arrival = time.perf_counter()
        self.admitted_at: float | None = None
        self.first_output_at: float | None = None
        self.cancel_reason: CancelReason | None = None
        self.task: asyncio.Task[None] | None = None
        self.output_tokens = 0
        self.output_audio_seconds = 0.0
        self.chain: TextChain | None = None  # generations: where followers read the text from
        self.input: TextInput | None = None  # synthesize requests: the text to speak
        self.source: Request | None = None  # chained synthesize requests: the generation spoken
        self.transcript: Transcript | None = None  # syntheses by a voice with word timings: what was said where
        self.spoken: SpokenText | None = None  # what a listener heard, for its terminal to say (a barge-in)
        self.registered = False  # held in the server's RequestRegistry (registry.py owns this flag)

    def cancel(self, reason: CancelReason) -> bool:
        """Cancel the request's task once; True when this call did (a request already ending sends its terminal)."""
        if self.task is not None and not self.task.done() and self.cancel_reason is None:
            self.cancel_reason = reason
            self.task.cancel()
            return True
        return False

    def hear(self, played_samples: int) -> None:
        """A barge-in: the client played `played_samples` of this synthesis's audio before cancelling it.

        Its terminal, and the terminal of the generation it speaks if that has not ended, say what was heard.
        """
        if self.transcript is None or self.state is State.ENDED:
            return
        self.spoken = self.transcript.heard(played_samples)
        if self.source is not None and self.source.state is not State.ENDED:
            self.source.spoken = self.spoken  # the same range: a chained synthesis's text is the generation's

    def admit(self) -> None:
        self.state = State.RUNNING
        self.admitted_at = time.perf_counter()
        self.observer.admitted()

    async def put(self, event: TokenDelta | AudioChunk) -> None:
        """Hand an engine output to the outbox (empty deltas are dropped); waits while the outbox is full."""
        if isinstance(event, TokenDelta):
            if not event.text and not event.token_ids:
                return
            self.output_tokens += len(event.token_ids)
            if event.text and self.chain is not None:
                self.chain.feed(event.text)
        else:
            self.output_audio_seconds += event.samples / event.sample_rate_hertz
        first = self.first_output_at is None
        if first:
            self.first_output_at = time.perf_counter()
            self.observer.first_output()
        self.observer.output(event)
        await self.outbox.put(event)
        if first:
            # The first output is the one its client waits for: the writer, woken by the put, sends it before this
            # request goes on (a one-token request would otherwise first finish, close its stream, free its slot).
            await asyncio.sleep(0)

    def finish(self, event: EngineFinished) -> None:
        """Terminal: the engine finished the request."""
        if self.state is State.ENDED:
            return
        now = time.perf_counter()
        engine_queue = event.engine_queue_seconds
        admitted = self.admitted_at if self.admitted_at is not None else now
        ttfo = None if self.first_output_at is None else self.first_output_at - self.arrival
        timings = Timings(
            queue=admitted - self.arrival + engine_queue,
            # the engine's prefill; else its own time to first output, an upper bound (its queueing is in it)
            prefill=event.prefill_seconds if event.prefill_seconds is not None else event.first_output_seconds,
            time_to_first_output=ttfo,
            total=now - self.arrival,
        )
        result = Finished(event.reason, event.usage, timings, event.stop_sequence, self.spoken)
        self._end(result)
        if event.reason is FinishReason.CANCELLED:
            self.observer.cancelled(result)
        else:
            self.observer.finished(result)

    def fail(self, error: RilletError) -> None:
        """Terminal: the request failed."""
        if self.state is not State.ENDED:
            self._end(Failed(error))
            self.observer.failed(error)

    def cancelled(self) -> None:
        """Terminal for a cancelled task: the outcome its cancel reason calls for."""
        match self.cancel_reason:
            case CancelReason.CLIENT | CancelReason.ABORTED | CancelReason.UPSTREAM | CancelReason.GONE:
                self.finish(EngineFinished(FinishReason.CANCELLED, self.usage_so_far()))
            case CancelReason.STALLED:
                self.outbox.discard()
                self.fail(
                    DeadlineExceeded(
                        "the client read nothing of this request's output within the stall limit",
                        reason=Reason.CLIENT_STALLED,
                    )
                )
            case CancelReason.INPUT_IDLE:
                self.fail(DeadlineExceeded("no input text arrived within the idle limit", reason=Reason.INPUT_IDLE))
            case _:
                self.fail(Unavailable("the server shut down before the request finished", reason=Reason.SHUTTING_DOWN))

    def usage_so_far(self) -> Usage:
        """What was produced before a cancellation."""
        return Usage(output_tokens=self.output_tokens, output_audio_seconds=self.output_audio_seconds)

    def _end(self, terminal: Finished | Failed) -> None:
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.outbox.end(terminal)
        complete = isinstance(terminal, Finished) and terminal.reason is not FinishReason.CANCELLED
        if self.chain is not None:
            self.chain.close(complete=complete)
        if self.source is not None and self.source.chain is not None and self.input is not None:
            self.source.chain.unfollow(self.input)
