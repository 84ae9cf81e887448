"""What a synthesis has said so far: its text, its words' places in its audio, and what a listener heard of them."""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Iterable

from rillet.server.types import SpokenText, WordTiming

__all__ = ["Transcript"]


class Transcript:
    """One synthesis request's text and the words of the audio it sent, for a barge-in to say what was heard.

    Invariants: `record` sees words in order, only those of chunks handed on to the session (so every word it holds
    belongs to audio the client will receive); `sent_samples` counts that audio at the chunks' rate; the text
    holds every piece the engine read, in order, bounded as a request's text is (LimitsConfig.max_synthesis_chars).
    """

    __slots__ = ("_ends", "_pieces", "_text", "_words", "sent_samples")

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._text: str | None = ""  # the pieces joined, or None when a piece arrived since
        self._words: list[WordTiming] = []
        self._ends: list[int] = []  # the words' end samples, never decreasing
        self.sent_samples = 0

    async def reading(self, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
        """`pieces`, passed through, each kept as the request's text."""
        async for piece in pieces:
            self._pieces.append(piece)
            self._text = None
            yield piece

    def record(self, words: Iterable[WordTiming], samples: int) -> None:
        """A chunk of `samples` went to the session, carrying `words` (those whose audio starts in it)."""
        for word in words:
            self._words.append(word)
            self._ends.append(max(word.end_sample, self._ends[-1] if self._ends else 0))
        self.sent_samples += samples

    def heard(self, played_samples: int) -> SpokenText:
        """The text through the last whole word whose audio ended within `played_samples` (clamped to what was sent).

        A word counts as heard only once all of its audio was played: a word cut in the middle was not heard.
        """
        played = max(0, min(played_samples, self.sent_samples))
        count = bisect.bisect_right(self._ends, played)
        if count == 0:
            return SpokenText("", 0, 0, played)
        start, end = self._words[0].start_char, self._words[count - 1].end_char
        return SpokenText(self.text()[start:end], start, end, played)

    def text(self) -> str:
        """The request's text read so far."""
        if self._text is None:
            self._text = "".join(self._pieces)
            self._pieces = [self._text]
        return self._text
