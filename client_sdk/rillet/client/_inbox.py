"""A session request's inbox: the messages its reader delivered and its iterator has not taken, bounded in bytes."""

from __future__ import annotations

import asyncio
import collections

from rillet.client._errors import RilletError
from rillet.client._types import AudioChunk, Finished, TokenDelta

Item = TokenDelta | AudioChunk | Finished | RilletError
"""An output, or one of the two terminal items: Finished, or the request's error."""

_TERMINAL = (Finished, RilletError)

DEFAULT_LIMIT_BYTES = 1024 * 1024
"""What one session request may hold by default: ~24 s of 22 kHz audio, tens of thousands of token deltas."""


def size(output: TokenDelta | AudioChunk) -> int:
    """About the bytes an output took on the wire (as the server counts its bounds): what an inbox's bound counts."""
    if isinstance(output, AudioChunk):
        return len(output.audio) + len(output.text) + 32
    return len(output.text) + 8 * len(output.token_ids) + 16 * sum(1 + len(lp.top) for lp in output.logprobs) + 16


class Inbox:
    """One session request's messages between the session's reader and the request's iterator.

    Invariants (enforced here and nowhere else):
    - It holds at most `limit_bytes` of outputs (by `size`) plus one: the session's reader `put`s each
      output as it arrives and, while the inbox is `full`, waits for `room` before it reads the session's next
      message. The SDK then stops reading the call, and HTTP/2 flow control pushes back on the server.
    - Terminal items take no room and are never waited for: no more messages for the request follow them.
    - After `discard` (the stream was closed or dropped: nobody will iterate it) it drops every output, held or
      arriving, and is never full; a terminal item is still kept, for an iterator another task may be running.
    """

    __slots__ = ("_discarded", "_getter", "_items", "_limit", "_room", "buffered_bytes")

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        if limit_bytes < 1:
            raise ValueError("an inbox's limit must be at least 1 byte")
        self._items: collections.deque[tuple[Item, int]] = collections.deque()
        self._limit = limit_bytes
        self._getter: asyncio.Future[None] | None = None  # the iterator, waiting for an item
        self._room: asyncio.Future[None] | None = None  # the session's reader, waiting for room
        self._discarded = False
        self.buffered_bytes = 0
        """Bytes of outputs held (by `size`)."""

    @property
    def full(self) -> bool:
        return self.buffered_bytes >= self._limit

    def put(self, item: Item, size: int = 0) -> None:
        """Deliver an output of `size` bytes, or a terminal item (size 0)."""
        if self._discarded and not isinstance(item, _TERMINAL):
            return
        self._items.append((item, size))
        self.buffered_bytes += size
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def room(self) -> None:
        """Wait until the inbox is no longer full (its iterator took outputs, or it was discarded)."""
        while self.full:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    async def get(self) -> Item:
        """The next item, in the order they arrived; waits for one."""
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        item, size = self._items.popleft()
        self.buffered_bytes -= size
        self._wake_reader()
        return item

    def discard(self) -> None:
        """Drop every output, held or to come; the reader never waits on this inbox again."""
        self._discarded = True
        self._items = collections.deque(entry for entry in self._items if isinstance(entry[0], _TERMINAL))
        self.buffered_bytes = 0
        self._wake_reader()

    def _wake_reader(self) -> None:
        room = self._room
        if room is not None and not room.done() and not self.full:
            room.set_result(None)
