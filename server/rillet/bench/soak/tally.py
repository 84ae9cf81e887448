"""What the soak counts, from every client task, and how it judges a stream (the raw client's checks, then its own)."""

from __future__ import annotations

import collections
import contextvars

from rillet.bench.wire import Status, Stream

WATCHED: contextvars.ContextVar[list[Stream]] = contextvars.ContextVar("watched")
"""The streams the current scenario opened (every task it starts shares the list): described if it hangs."""


def watch(stream: Stream) -> Stream:
    """Put `stream` on the current scenario's watch list (the hang watch reads its last message's time)."""
    watched = WATCHED.get(None)
    if watched is not None:
        watched.append(stream)
    return stream


def describe(stream: Stream, now: float) -> str:
    """A hung stream, for the report."""
    last = "no message yet" if stream.last_at is None else f"last message {now - stream.last_at:.0f}s ago"
    age = now - stream.started
    return f"{stream.label}: {stream.outputs} outputs, next seq {stream.next_seq}, started {age:.0f}s ago, {last}"


class Tally:
    """Everything the soak counts; one instance, updated from every client task."""

    def __init__(self) -> None:
        self.served: collections.Counter[str] = collections.Counter()  # completed requests by kind
        self.cancelled: collections.Counter[str] = collections.Counter()  # by kind and where the cancel landed
        self.events: collections.Counter[str] = collections.Counter()  # scenarios, disconnects, retries, races
        self.bad_input: collections.Counter[str] = collections.Counter()  # by kind, each got its expected status
        self.codes: collections.Counter[str] = collections.Counter()  # every non-OK status seen, by code and reason
        self.streams_verified = 0
        self.lost: list[str] = []
        self.violations: list[str] = []
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.open_calls = 0
        self.open_calls_samples: list[int] = []

    def code(self, status: Status) -> None:
        self.codes[status.key] += 1

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def verified(self, stream: Stream, *, complete: bool = True) -> None:
        """Account one stream; `complete` when it must have ended with its terminal (not abandoned mid-stream)."""
        self.streams_verified += 1
        stream.judged = True
        if stream.problems:
            self.lost.append(f"{stream.label}: {'; '.join(stream.problems[:3])}")
        elif complete and stream.terminal is None:
            self.lost.append(f"{stream.label}: the stream ended without a terminal message")

    def calls(self, delta: int) -> None:
        self.open_calls += delta
