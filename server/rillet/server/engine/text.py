"""Helpers shared by text engines: the sampling check at the engine seam, and one decoder from output to deltas."""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rillet.server.errors import InvalidArgument
from rillet.server.reasons import Reason
from rillet.server.types import GenerationRequest, TextCapabilities

__all__ = ["StopCheck", "StopMatcher", "TextDecoder", "check_request"]


def check_request(request: GenerationRequest, capabilities: TextCapabilities) -> None:
    """Refuse, with INVALID_ARGUMENT, what no text engine can honour or this one does not; engines call it first.

    The server's own limits (validation.py: temperature at most 2, top_logprobs at most 20, max_tokens within the
    model's) are policy and are checked before a request reaches an engine, with the model's capabilities; this is
    the seam's guard for anything that calls an engine directly: values that have no meaning (negative temperature,
    top_p outside (0, 1], NaN), and fields the engine does not honour.
    """
    sampling = request.sampling
    bad = (
        ("temperature", sampling.temperature, not sampling.temperature >= 0 or math.isinf(sampling.temperature)),
        ("top_p", sampling.top_p, not 0 < sampling.top_p <= 1),
        ("top_k", sampling.top_k, sampling.top_k < 0),
        ("min_p", sampling.min_p, not 0 <= sampling.min_p <= 1),
        (
            "repetition_penalty",
            sampling.repetition_penalty,
            not sampling.repetition_penalty > 0 or math.isinf(sampling.repetition_penalty),
        ),
    )
    for name, value, wrong in bad:
        if wrong:
            raise InvalidArgument(
                f"sampling.{name} = {value} cannot be honoured",
                field=f"params.sampling.{name}",
                reason=Reason.SAMPLING_OUT_OF_RANGE,
            )
    if request.max_tokens < 1:
        raise InvalidArgument(
            f"max_tokens = {request.max_tokens} must be at least 1",
            field="params.max_tokens",
            reason=Reason.MAX_TOKENS_OUT_OF_RANGE,
        )
    if request.top_logprobs is not None and request.top_logprobs < 0:
        raise InvalidArgument(
            f"top_logprobs = {request.top_logprobs} must not be negative",
            field="params.top_logprobs",
            reason=Reason.TOP_LOGPROBS_OUT_OF_RANGE,
        )
    refusal = capabilities.refusal(sampling, request.top_logprobs, request.constraint)
    if refusal is not None:
        raise refusal


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


class TextDecoder(StopMatcher):
    """One request's output on its way to deltas: token bytes or text in, text safe to emit (or the stop) out.

    The one pipeline of every text engine: bytes → UTF-8 → stop strings held back (StopMatcher) → what may be
    emitted now, and the stop string that ends the stream. Three ways in, one per kind of engine output (a decoder
    takes one of them):
    - `feed_bytes`: one token's bytes (llama.cpp's pieces). Invariant: what it passes on is the longest decodable
      prefix of the bytes seen so far minus what was already passed on; the bytes held are an incomplete UTF-8
      sequence (at most 3), so no character is ever split across deltas. Invalid bytes become U+FFFD as soon as they
      are known to be invalid.
    - `feed`: a piece of text (the synthetic engine's words).
    - `feed_cumulative`: the whole text so far, append-only (TensorRT-LLM's `CompletionOutput.text`, whose
      incremental detokenizer holds back incomplete UTF-8 itself). Invariant: the text fed on is a prefix of the
      engine's text, and what the stop matcher holds is the only fed text not yet emitted.
    `finish` ends a stream that stopped for another reason (length, an end-of-generation token): it releases an
    incomplete UTF-8 tail (as U+FFFD) and the held-back text, unless that tail completes a stop string, which then
    matches. Nothing is fed after a match or `finish`.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        super().__init__(stops)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._fed_chars = 0

    def feed_bytes(self, data: bytes) -> StopCheck:
        """Add one token's bytes."""
        return self.feed(self._utf8.decode(data))

    def feed_cumulative(self, text: str) -> StopCheck:
        """Add the engine's whole text so far; only what is new since the last call is fed."""
        piece = text[self._fed_chars :]
        self._fed_chars = max(self._fed_chars, len(text))
        return self.feed(piece)

    def finish(self) -> StopCheck:
        """End the stream: everything left to emit, or the stop string an incomplete UTF-8 tail completed."""
        tail = self._utf8.decode(b"", final=True)
        check = self.feed(tail) if tail else StopCheck("")
        if check.matched is not None:
            return check
        return StopCheck(check.emit + self.flush())
