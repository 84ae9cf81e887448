"""The hand-off between the event loop and the engine thread: submitted sequences in, their items out, one lock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rillet.server.engine.llamacpp.planner import KvSequence
from rillet.server.engine.text import TextDecoder
from rillet.server.errors import RilletError
from rillet.server.types import EngineFinished, TokenDelta

if TYPE_CHECKING:
    from rillet.server.engine.llamacpp.guide import Guide
    from rillet.server.engine.llamacpp.native import Sampler

__all__ = ["Item", "Mailbox", "Outbox", "Sink", "SubmittedSequence", "coalesce"]

Item = TokenDelta | EngineFinished | RilletError
"""What the engine thread sends a stream: deltas, then exactly one EngineFinished or one error."""


def coalesce(items: Sequence[Item]) -> list[Item]:
    """Merge runs of consecutive TokenDeltas into one; order and everything else are kept."""
    merged: list[Item] = []
    run: list[TokenDelta] = []
    for item in items:
        if isinstance(item, TokenDelta):
            run.append(item)
            continue
        if run:
            merged.append(TokenDelta.join(run))
            run = []
        merged.append(item)
    if run:
        merged.append(TokenDelta.join(run))
    return merged


class Sink:
    """One stream's inbox on its event loop. The engine thread fills it only through `call_soon_threadsafe`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Item] = asyncio.Queue()

    async def take(self) -> list[Item]:
        """Everything available (at least one item), consecutive deltas coalesced."""
        items = [await self.queue.get()]
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return coalesce(items)


@dataclass(eq=False, kw_only=True)
class SubmittedSequence(KvSequence):
    """One request inside the engine: the planner's record plus what its decoding and its stream need.

    `cancelled` is written by the event loop and read by the engine thread; every other field belongs to the
    engine thread alone once the sequence is submitted. `sink` None marks an internal (warm-up) sequence whose
    items are dropped.
    """

    sink: Sink | None
    decoder: TextDecoder
    submitted_at: float
    guide: Guide | None = None  # a constrained sequence's matcher, compiled before submission
    output_tokens: int = 0
    sampler: Sampler | None = None
    admitted_at: float | None = None
    prefill_seconds: float | None = None


class Mailbox:
    """The state the event loop and the engine thread share, guarded by one condition.

    Invariant: once `refusal` is set no sequence enters the inbox, so every submitted sequence is either seen by
    the engine thread (which then owes it exactly one terminal item) or refused at submit.
    """

    def __init__(self, refusal: Callable[[], RilletError]) -> None:
        self._cond = threading.Condition()
        self._inbox: list[SubmittedSequence] = []
        self._stopping = False
        self._refusal: Callable[[], RilletError] | None = refusal

    def open(self) -> None:
        with self._cond:
            if not self._stopping:
                self._refusal = None

    def submit(self, seq: SubmittedSequence) -> None:
        with self._cond:
            if self._refusal is not None:
                raise self._refusal()
            self._inbox.append(seq)
            self._cond.notify()

    def cancel(self, seq: SubmittedSequence) -> None:
        seq.cancelled = True
        with self._cond:
            self._cond.notify()

    def take(self, *, block: bool) -> list[SubmittedSequence] | None:
        """New sequences (waiting for one if `block`); None once the engine must stop."""
        with self._cond:
            while block and not self._inbox and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            taken, self._inbox = self._inbox, []
            return taken

    def close(self, refusal: Callable[[], RilletError]) -> list[SubmittedSequence]:
        """Refuse new work with `refusal`, ask the engine thread to stop; returns what was left in the inbox."""
        with self._cond:
            if not self._stopping:
                self._refusal = refusal
            self._stopping = True
            left, self._inbox = self._inbox, []
            self._cond.notify()
            return left


def _deliver(batch: list[tuple[Sink, Item]]) -> None:
    for sink, item in batch:
        sink.queue.put_nowait(item)


class Outbox:
    """The engine thread's items on their way to the streams' event loops: handed over once per step.

    Invariant: an item reaches its sink in the order it was sent, and one thread-safe call per loop per step carries
    them all (a loop wakes once a step, however many of its streams advanced).
    """

    def __init__(self) -> None:
        self._batches: dict[asyncio.AbstractEventLoop, list[tuple[Sink, Item]]] = {}

    def send(self, seq: SubmittedSequence, item: Item) -> None:
        if seq.sink is not None:
            self._batches.setdefault(seq.sink.loop, []).append((seq.sink, item))

    def flush(self) -> list[asyncio.AbstractEventLoop]:
        """Hand this step's items to their event loops; returns the loops found closed (nobody reads them again)."""
        batches, self._batches = self._batches, {}
        closed: list[asyncio.AbstractEventLoop] = []
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed
                closed.append(loop)
        return closed

    def clear(self) -> None:
        """Drop what was sent and not flushed (warm-up's items)."""
        self._batches.clear()
