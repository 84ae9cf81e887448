"""Incremental text helpers shared by text engines: stop-string matching across token boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopCheck:
    """What may be emitted now, and the stop string that matched, if any."""

    emit: str
    matched: str | None = None


class StopMatcher:
    """Finds stop strings in a stream of text pieces without ever emitting (part of) a match.

    Invariant: the text held back is the longest suffix of the unemitted text that is a proper prefix of some
    stop string, so a match that spans pieces is still found, and everything before it is emitted as early as
    possible.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: str) -> StopCheck:
        """Add new text; return what is safe to emit and whether a stop string matched (then stop feeding)."""
        if not self._stops:
            return StopCheck(piece)
        text = self._held + piece
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._held = ""
            return StopCheck(text[: first[0]], first[1])
        keep = self._held_suffix(text)
        self._held = text[len(text) - keep :]
        return StopCheck(text[: len(text) - keep])

    def flush(self) -> str:
        """The held-back text, released when the stream ends for another reason."""
        held, self._held = self._held, ""
        return held

    def _held_suffix(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
