"""The prefill pacer: how many prompt tokens the next step takes, chosen from measured step times (pure)."""

from __future__ import annotations

import math

__all__ = ["OUTLIER_FACTOR", "PrefillPacer"]

OUTLIER_FACTOR = 3.0
"""A step counts as at most this many times what the model predicted: on a shared machine a step now and then takes
ten times its due (another process held a core while llama.cpp's threads waited for each other at a barrier), and
one such step would otherwise shrink the chunk to the floor for many steps after."""


class PrefillPacer:
    """Each step's prompt-token budget, from what is decoding and how long recent steps took.

    Invariants:
    - with nothing decoding, a step takes up to `batch` prompt tokens (across the waiting prompts): no running
      sequence's inter-token gap depends on it;
    - beside `d` running decodes, it takes the most prompt tokens whose predicted step time stays within `stretch`
      times the decode-only step measured at `d` decodes, or at the latency-sensitive ones among them (the decodes'
      inter-token gap bound, as Sarathi-Serve sizes its chunks: from measured step time, not a constant), never
      fewer than `floor` (a waiting prompt's progress guarantee, which the bound yields to; 1 when the caller says
      no prompt needs it) nor more than `batch`; until both a decode-only step and a step with prompt tokens have
      been measured, it takes `floor`;
    - it learns only from `observe` (durations the caller measured): it reads no clock, so its decisions are
      tested without llama.cpp.

    The model: a step of `d` decodes and `p` prompt tokens takes decode(d) + p * token. decode(d) is a moving
    average of decode-only steps of `d` decodes (one measured at the nearest count, the smaller on a tie, stands in
    for a count not measured yet); token is the ratio of moving averages of (time - decode(d)) and p over steps with
    prompt tokens beside decodes (before any, over steps of prompt tokens alone). Averages move by `smoothing` per
    step, and a step counts as at most OUTLIER_FACTOR times the model's prediction, so one slow step (another
    process took the core) moves the budget a little, not all the way.
    Owned by the engine thread.
    """

    def __init__(self, *, batch: int, floor: int, stretch: float, smoothing: float = 0.25) -> None:
        if not 0 < floor <= batch:
            raise ValueError(f"the floor ({floor}) must be within 1..batch ({batch})")
        if stretch < 1.0 or not 0.0 < smoothing <= 1.0:
            raise ValueError(f"stretch {stretch} must be at least 1 and smoothing {smoothing} within (0, 1]")
        self.batch = batch
        self.floor = floor
        self.stretch = stretch
        self._smoothing = smoothing
        self._decode: dict[int, float] = {}
        self._beside: tuple[float, float] | None = None  # (seconds, tokens) averages, prompt tokens beside decodes
        self._alone: tuple[float, float] | None = None  # the same over steps of prompt tokens alone

    def budget(self, decodes: int, *, sensitive: int | None = None, floor: bool = True) -> int:
        """Prompt tokens the next step may take beside `decodes` running decodes.

        `sensitive`: how many of them are latency-sensitive (all when None): the step is kept within `stretch` times
        the decode-only step of those alone, so decodes that are not (batch work) use up the room before prompt
        tokens do. `floor` False: no waiting prompt needs the floor's progress guarantee over the gap bound (batch
        prompts beside interactive decodes), so the bound alone sizes the chunk, at least one token.
        """
        if decodes <= 0:
            return self.batch
        least = self.floor if floor else 1
        decode = self.decode_seconds(decodes)
        bounded = decode if sensitive is None else self.decode_seconds(max(1, min(sensitive, decodes)))
        token = self.token_seconds()
        if decode is None or bounded is None or token is None:
            return least
        room = self.stretch * bounded - decode
        tokens = self.batch if token <= 0.0 else math.floor(room / token + 1e-9)
        return max(least, min(self.batch, tokens))

    def observe(self, decodes: int, prefill: int, seconds: float) -> None:
        """A step of `decodes` decodes and `prefill` prompt tokens took `seconds`, from its batch to its last output."""
        if seconds < 0.0 or (decodes <= 0 and prefill <= 0):
            return
        predicted = self.predict(decodes, prefill)
        if predicted is not None:  # a step another process stalled says little about the next: bounded influence
            seconds = min(seconds, OUTLIER_FACTOR * predicted)
        if prefill <= 0:
            last = self._decode.get(decodes)
            self._decode[decodes] = seconds if last is None else self._mix(last, seconds)
            return
        if decodes <= 0:
            self._alone = self._mix_pair(self._alone, seconds, prefill)
            return
        decode = self.decode_seconds(decodes)
        if decode is not None:  # what the prompt tokens added to the decodes' own step
            self._beside = self._mix_pair(self._beside, max(0.0, seconds - decode), prefill)

    def predict(self, decodes: int, prefill: int) -> float | None:
        """The model's time for a step of `decodes` decodes and `prefill` prompt tokens; None before it can say."""
        token = self.token_seconds() if decodes > 0 else _per_token(self._alone)
        if prefill > 0 and token is None:
            return None
        decode = self.decode_seconds(decodes) if decodes > 0 else 0.0
        if decode is None:
            return None
        return decode + prefill * (token or 0.0)

    def decode_seconds(self, decodes: int) -> float | None:
        """The measured decode-only step at `decodes` decodes, or at the nearest count measured; None before any."""
        if decodes in self._decode:
            return self._decode[decodes]
        if not self._decode:
            return None
        nearest = min(self._decode, key=lambda count: (abs(count - decodes), count))
        return self._decode[nearest]

    def token_seconds(self) -> float | None:
        """The measured cost of one prompt token beside decodes (or alone, before any beside them); None before any."""
        return _per_token(self._beside if self._beside is not None else self._alone)

    def clear(self) -> None:
        """Forget every measurement (warm-up's steps pay first-use costs that say nothing about serving)."""
        self._decode.clear()
        self._beside = None
        self._alone = None

    def _mix(self, average: float, value: float) -> float:
        return average + self._smoothing * (value - average)

    def _mix_pair(self, pair: tuple[float, float] | None, seconds: float, tokens: int) -> tuple[float, float]:
        if pair is None:
            return seconds, float(tokens)
        return self._mix(pair[0], seconds), self._mix(pair[1], float(tokens))


def _per_token(pair: tuple[float, float] | None) -> float | None:
    """Seconds per prompt token from a (seconds, tokens) pair of averages; None without one."""
    if pair is None:
        return None
    seconds, tokens = pair
    return seconds / tokens
