"""Incremental text segmentation for speech: cut streaming text at sentence, then clause, then length bounds."""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["Segment", "Segmenter", "segments"]

SENTENCE_ENDS = frozenset(".!?…")
"""End a sentence when whitespace follows (after any closing quotes or brackets)."""
WIDE_SENTENCE_ENDS = frozenset("\u3002\uff01\uff1f")  # ideographic full stop, full-width ! and ?
"""Full-width sentence ends: no whitespace follows them."""
CLAUSE_ENDS = frozenset(",;:—")
"""End a clause when whitespace follows; the em dash also without it ("this—that")."""
SPACED_DASHES = frozenset("-\u2013")  # hyphen, en dash
"""A hyphen or en dash ends a clause only between spaces ("this - that")."""
CLOSERS = frozenset("\"')]}\u201d\u2019\u00bb")  # also right double and single quotes, »
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "cf", "approx", "fig", "figs",
        "eq", "vol", "ch", "sec", "dept", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep", "rev", "hon",
        "pres", "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "ph.d",
    }
)  # fmt: skip
"""Words whose trailing period does not end a sentence (lowercase, without that period)."""

_WORD_BEFORE = re.compile(r"[\w.]+$")
_INITIALISM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # e.g, i.e, u.s, a.m


class Segment(str):
    """A segment's text, and `start`: the index of its first character in the whole input (all pieces, in order)."""

    start: int

    def __new__(cls, text: str, start: int) -> Segment:
        segment = super().__new__(cls, text)
        segment.start = start
        return segment


class _Boundary(enum.Enum):
    SENTENCE = "sentence"
    CLAUSE = "clause"


class Segmenter:
    """Cuts a stream of text pieces into segments for synthesis, each as early as the text allows.

    Where the current segment ends, in order of preference:
    1. At a sentence end: `. ! ? …` followed by whitespace (closing quotes or brackets may come between), or a
       blank line. Always cut. A period after an abbreviation ("Dr.", "e.g."), a capital initial ("J.") or a
       list number opening the segment ("1.") is not a sentence end; a period inside a number ("3.5") has no
       whitespace after it, so it never is.
    2. At a clause end: `, ; :` followed by whitespace, an em dash, a spaced dash, or a line break; but only once
       the segment is at least `clause_chars` long. The first segment uses `first_clause_chars` instead, which
       is meant to be small so that audio starts early; later ones are longer, which sounds more natural.
    3. At the cap: a segment never exceeds `max_chars` (`first_max_chars` for the first one). A run without a
       boundary is cut at its last clause end if that is past half the cap, else at its last whitespace, else
       (one enormous word) mid-word.

    Invariants:
    - A boundary is decided only once the character after it has arrived (or at `flush`), so the segments do
      not depend on how the text was split into pieces.
    - Segments come out in input order, stripped, never empty; their words, in order, are the input's words.
    - Each segment is the input's text from its `start` (Segment.start), character for character.
    """

    def __init__(
        self,
        *,
        max_chars: int = 160,
        clause_chars: int = 80,
        first_clause_chars: int = 20,
        first_max_chars: int | None = None,
    ) -> None:
        first_max = max_chars if first_max_chars is None else first_max_chars
        if min(max_chars, clause_chars, first_clause_chars, first_max) < 1:
            raise ValueError("segment lengths must be positive")
        self._max_chars = max_chars
        self._clause_chars = clause_chars
        self._first_clause_chars = first_clause_chars
        self._first_max_chars = first_max
        self._buffer = ""
        self._start = 0
        """Where `_buffer` starts in the whole input."""
        self._scanned = 0
        """Positions of `_buffer` before this one were already checked (and did not cut)."""
        self._last_clause = 0
        """End of the last clause boundary in `_buffer` that was too early to cut at; 0 if none."""
        self._emitted = 0
        self._characters = 0

    @property
    def characters(self) -> int:
        """Characters fed so far, whitespace included."""
        return self._characters

    @property
    def emitted(self) -> int:
        """Segments emitted so far. Zero after `flush` means the input held no text to speak."""
        return self._emitted

    def feed(self, piece: str) -> list[Segment]:
        """Add a piece of text; return the segments it completes (often none)."""
        self._characters += len(piece)
        if self._buffer:
            self._buffer += piece
        else:  # the buffer never starts with whitespace
            self._buffer = piece.lstrip()
            self._start = self._characters - len(self._buffer)
        out: list[Segment] = []
        while (cut := self._next_cut()) is not None:
            end, resume = cut
            self._emit(self._buffer[:end], out)
            rest = self._buffer[resume:]
            self._buffer = rest.lstrip()
            self._start += resume + len(rest) - len(self._buffer)
            self._scanned = 0
            self._last_clause = 0
        return out

    def flush(self) -> list[Segment]:
        """End of input: return the rest as a last segment (or nothing) and reset for a new input."""
        out: list[Segment] = []
        self._emit(self._buffer, out)
        self._buffer = ""
        self._start = self._characters
        self._scanned = 0
        self._last_clause = 0
        return out

    def _emit(self, text: str, out: list[Segment]) -> None:
        segment = text.rstrip()  # `text` starts at `_start`, never with whitespace
        if segment:
            out.append(Segment(segment, self._start))
            self._emitted += 1

    def _next_cut(self) -> tuple[int, int] | None:
        """(end of the segment, start of the rest) for the next cut in the buffer, or None for now."""
        first = self._emitted == 0
        clause_chars = self._first_clause_chars if first else self._clause_chars
        limit = self._first_max_chars if first else self._max_chars
        buffer = self._buffer
        # Position i is decidable once buffer[i + 1] exists.
        for i in range(self._scanned, len(buffer) - 1):
            kind = self._boundary(i)
            if kind is _Boundary.SENTENCE or (kind is _Boundary.CLAUSE and i + 1 >= clause_chars):
                return i + 1, i + 1
            if kind is _Boundary.CLAUSE:
                self._last_clause = i + 1
            if i + 1 >= limit:
                # No boundary within the first `limit` characters, and buffer[limit] is known.
                return self._cap_cut(limit)
        self._scanned = max(self._scanned, len(buffer) - 1)
        return None

    def _cap_cut(self, limit: int) -> tuple[int, int]:
        if self._last_clause >= limit // 2:
            return self._last_clause, self._last_clause
        window = self._buffer[: limit + 1]
        for k in range(len(window) - 1, 0, -1):
            if window[k].isspace():
                return k, k + 1
        return limit, limit

    def _boundary(self, i: int) -> _Boundary | None:
        buffer = self._buffer
        char, after = buffer[i], buffer[i + 1]
        if char in WIDE_SENTENCE_ENDS:
            return _Boundary.SENTENCE
        if char == "\n":
            return _Boundary.SENTENCE if after == "\n" else _Boundary.CLAUSE
        if not after.isspace():
            return _Boundary.CLAUSE if char == "—" else None
        j = i
        while j > 0 and buffer[j] in CLOSERS:
            j -= 1
        mark = buffer[j]
        if mark in SENTENCE_ENDS:
            return None if mark == "." and self._period_is_not_an_end(j) else _Boundary.SENTENCE
        if mark in CLAUSE_ENDS:
            return _Boundary.CLAUSE
        if mark in SPACED_DASHES and j > 0 and buffer[j - 1].isspace():
            return _Boundary.CLAUSE
        return None

    def _period_is_not_an_end(self, j: int) -> bool:
        """Whether the period at `j` belongs to an abbreviation, an initial or a list number."""
        match = _WORD_BEFORE.search(self._buffer, 0, j)
        if match is None:
            return False
        word = match.group()
        lowered = word.lower()
        if lowered in ABBREVIATIONS or _INITIALISM.fullmatch(lowered):
            return True
        if len(word) == 1 and word.isalpha() and word.isupper():
            return True
        return word.isdigit() and match.start() == 0


async def segments(pieces: AsyncIterator[str], segmenter: Segmenter | None = None) -> AsyncGenerator[Segment, None]:
    """Segments of an async stream of text pieces, each yielded as soon as it is complete; the rest at the end."""
    cutter = segmenter if segmenter is not None else Segmenter()
    async for piece in pieces:
        for segment in cutter.feed(piece):
            yield segment
    for segment in cutter.flush():
        yield segment
