"""Text into synthesis: a synthesize request's input pieces, and the chain that feeds it a generation's output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable


class TextInput:
    """The text a synthesize request speaks, piece by piece, until its input ends.

    Invariants: after `end` nothing more is accepted and the engine's iterator finishes once it has the pieces
    fed before; `idle_since` is set only while the engine waits for text that has not come (the idle-input limit's
    clock), never while it is still speaking what it has.
    """

    def __init__(self, *, streaming: bool) -> None:
        self.streaming = streaming  # more text may come in AppendText messages
        self.ended = False
        self.chars = 0
        self.idle_since: float | None = None
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def feed(self, text: str) -> None:
        if not self.ended and text:
            self.chars += len(text)
            self._pieces.put_nowait(text)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._pieces.put_nowait(None)

    async def pieces(self) -> AsyncIterator[str]:
        """What the engine reads: every piece fed, until the input ends."""
        while True:
            if self._pieces.empty() and not self.ended:
                self.idle_since = time.monotonic()
            try:
                piece = await self._pieces.get()
            finally:
                self.idle_since = None
            if piece is None:
                return
            yield piece


class TextChain:
    """Feeds a generation's text, as it is generated, into the synthesize requests that speak it.

    Invariant: a follower receives the source's whole text exactly once, in order: what exists when it joins,
    then every later delta; when the source completes its input ends, and when the source is cancelled or fails
    the follower is cancelled through `on_lost`.
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._followers: dict[TextInput, Callable[[], object]] = {}
        self.closed = False
        self.complete = False  # closed because the source completed (not cancelled, not failed)

    def follow(self, target: TextInput, on_lost: Callable[[], object]) -> None:
        for text in self._text:
            target.feed(text)
        if not self.closed:
            self._followers[target] = on_lost
        elif self.complete:
            target.end()
        else:
            on_lost()

    def unfollow(self, target: TextInput) -> None:
        self._followers.pop(target, None)

    def feed(self, text: str) -> None:
        self._text.append(text)
        for target in self._followers:
            target.feed(text)

    def close(self, *, complete: bool) -> None:
        """The source ended: followers' inputs end (complete) or followers are cancelled (it did not)."""
        self.closed, self.complete = True, complete
        followers, self._followers = self._followers, {}
        for target, on_lost in followers.items():
            if complete:
                target.end()
            else:
                on_lost()
