"""What a session's writer holds: each request's outbox (seq, coalescing, a byte bound) and the session's budget."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from rillet.server.types import AudioChunk, Failed, Finished, Output, TokenDelta

Payload = TokenDelta | AudioChunk | Finished | Failed


def wire_size(payload: TokenDelta | AudioChunk) -> int:
    """Approximate bytes an output takes on the wire; what the bounds count."""
    if isinstance(payload, AudioChunk):
        return len(payload.audio) + len(payload.text) + 32
    return len(payload.text) + 8 * len(payload.token_ids) + 16 * sum(1 + len(lp.top) for lp in payload.logprobs)


class OutboundBudget:
    """The session-wide bound on everything its writer holds: every request's pending outputs and `rejected` replies.

    Invariant: a producer (an engine pump, or the reader queueing a rejection) waits while the budget is at or over
    its limit, so the session holds at most `limit_bytes` plus one output per producer. When the reader waits, the
    session stops reading client messages and gRPC's flow control pushes back on the client.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0
        self._space: asyncio.Event | None = None  # made by the first producer that has to wait

    @property
    def full(self) -> bool:
        return self.used >= self.limit_bytes

    def add(self, size: int) -> None:
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        if self._space is not None and not self.full:
            self._space.set()

    async def wait_for_space(self) -> None:
        while self.full:
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()


class Outbox:
    """One request's outputs waiting for the writer.

    Invariants (each enforced here and nowhere else):
    - `seq` numbers the request's outputs 0, 1, 2, ... with no gap; numbers are assigned when the writer takes
      outputs, so outputs discarded before that (a stalled client's) never leave a hole.
    - Token deltas coalesce while the writer is behind (the writer takes one delta, however many arrived); audio
      chunks queue in order.
    - The pending bytes stay under `limit_bytes` (plus one output): `put` waits while this outbox or the session's
      budget is full, which pauses the request's engine stream.
    - The terminal output is taken exactly once, after every other output.
    - `waiting_since` is, while an output waits for the client, when the client last made progress: when the
      oldest waiting output became ready, or later when the transport took one of this request's outputs (`sent`,
      counted by the writer, seen by `waiting_for_client`). The stall watchdog's only clock: a slow engine is never
      mistaken for a client that stopped reading, nor a client that reads slowly, at its own pace (a listener
      playing audio at real time), for one that stopped.
    """

    def __init__(
        self, request_id: str, budget: OutboundBudget, limit_bytes: int, on_ready: Callable[[Outbox], None]
    ) -> None:
        self.request_id = request_id
        self.waiting_since: float | None = None
        self.sent = 0  # outputs the transport took (the writer counts them)
        self._sent_seen = 0
        self._budget = budget
        self._limit_bytes = limit_bytes
        self._on_ready = on_ready
        self._seq = 0
        self._deltas: list[TokenDelta] = []  # coalesced into one when the writer takes them
        self._audio: collections.deque[AudioChunk] = collections.deque()
        self._pending_bytes = 0  # in `_deltas` and `_audio`
        self._taken_bytes = 0  # taken by the writer, not yet delivered to the transport
        self._terminal: Finished | Failed | None = None
        self._terminal_taken = False
        self._queued = False
        self._signalled_at = 0.0
        self._space: asyncio.Event | None = None  # made when `put` first has to wait for the writer

    @property
    def done(self) -> bool:
        """The terminal output was taken: the request is over for the client."""
        return self._terminal_taken

    async def put(self, payload: TokenDelta | AudioChunk) -> None:
        """Queue an output for the writer; waits while this outbox or the session budget is full."""
        size = wire_size(payload)
        if isinstance(payload, TokenDelta):
            self._deltas.append(payload)
        else:
            self._audio.append(payload)
        self._pending_bytes += size
        self._budget.add(size)
        self._signal()
        while self._pending_bytes >= self._limit_bytes or self._budget.full:
            if self._pending_bytes >= self._limit_bytes:
                if self._space is None:
                    self._space = asyncio.Event()
                self._space.clear()
                await self._space.wait()
            else:
                await self._budget.wait_for_space()

    def end(self, terminal: Finished | Failed) -> None:
        """Set the terminal output (the first call wins); it follows whatever is pending."""
        if self._terminal is None:
            self._terminal = terminal
            self._signal()

    def discard(self) -> None:
        """Drop the pending outputs (a stalled client will only get the terminal error)."""
        self._deltas.clear()
        self._audio.clear()
        self._free_pending()

    def take(self) -> list[Output]:
        """Everything ready, numbered. Called by the writer only; `delivered` must follow once they are sent."""
        self._queued = False
        payloads: list[Payload] = []
        if self._deltas:
            payloads.append(TokenDelta.join(self._deltas))
            self._deltas = []
        payloads.extend(self._audio)
        self._audio.clear()
        self._taken_bytes += self._pending_bytes
        self._pending_bytes = 0
        if self._space is not None:
            self._space.set()
        if self._terminal is not None and not self._terminal_taken:
            self._terminal_taken = True
            payloads.append(self._terminal)
        outputs = [Output(self.request_id, self._seq + i, p) for i, p in enumerate(payloads)]
        self._seq += len(outputs)
        return outputs

    def delivered(self) -> None:
        """The transport took what `take` returned: release its bytes and restart the stall clock."""
        self._budget.release(self._taken_bytes)
        self._taken_bytes = 0
        self.waiting_since = time.monotonic() if self._queued else None

    def waiting_for_client(self, now: float) -> float | None:
        """Since when an output has waited with the client taking nothing of this request; None when none waits.

        Progress made since the last look (`sent` moved) restarts the clock at `now`.
        """
        if self.sent != self._sent_seen:
            self._sent_seen = self.sent
            if self.waiting_since is not None:
                self.waiting_since = now
        return self.waiting_since

    def close(self) -> None:
        """Return every byte to the budget (the session is ending)."""
        self._free_pending()
        self._budget.release(self._taken_bytes)
        self._taken_bytes = 0

    def _free_pending(self) -> None:
        self._budget.release(self._pending_bytes)
        self._pending_bytes = 0
        if self._space is not None:
            self._space.set()

    def _signal(self) -> None:
        if not self._queued:
            self._queued = True
            self._signalled_at = time.monotonic()
            if self.waiting_since is None:
                self.waiting_since = self._signalled_at
            self._on_ready(self)
