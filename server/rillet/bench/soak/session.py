"""The soak's Session call (the raw client's, knowing which rejections it provoked), and following one request in it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from rillet.bench.soak.catalog import INVALID, NOT_FOUND, RE, echoed
from rillet.bench.soak.context import Soak
from rillet.bench.soak.tally import Tally, watch
from rillet.bench.wire import RawSession, Request, Status, status_of
from rillet.v1 import common_pb2, inference_service_pb2


class SoakSession(RawSession):
    """A RawSession whose `rejected` replies are matched against those the client provoked (echoed id, code, reason).

    Any other rejection, a message for a request never started, and one after a stream was already judged go to the
    tally; every request is followed (its messages queued) and verified without the token and audio counts.
    """

    def __init__(self, channel: grpc.aio.Channel, tally: Tally, label: str, id_limit: int) -> None:
        super().__init__(channel, label)
        self.tally = tally
        self.id_limit = id_limit
        self.expected: list[tuple[str, frozenset[grpc.StatusCode], str]] = []  # (echoed id, codes, reason)
        self.disconnecting = False  # set before the client closes the channel on purpose
        tally.calls(+1)
        self._reader.add_done_callback(lambda _: tally.calls(-1))

    def track(  # type: ignore[override]
        self, request_id: str, label: str
    ) -> Request:
        request = super().track(request_id, f"{self.label} {label} {request_id}", follow=True, counts=False)
        watch(request.stream)
        return request

    def expect_rejection(self, request_id: str, codes: Iterable[grpc.StatusCode], reason: str = "") -> None:
        self.expected.append((echoed(request_id, self.id_limit), frozenset(codes), reason))

    def rejected(self, request_id: str, seq: int, status: Status) -> None:
        self.tally.code(status)
        if seq != 0:
            self.tally.violation(f"{self.label}: rejected with seq {seq} (always 0)")
        for i, (rid, codes, reason) in enumerate(self.expected):
            if rid == request_id and status.code in codes and (not reason or reason == status.reason):
                del self.expected[i]
                return
        request = self.requests.get(request_id)
        if (
            request is not None
            and request.stream.terminal is not None
            and request.follow_ups
            and status.code is NOT_FOUND
        ):
            # The request had ended (a cancel landed late, or it was refused while input was still being sent): what
            # the client expected for its later messages no longer applies.
            self.expected = [e for e in self.expected if e[0] != request_id]
            self.tally.events["follow-up raced the request's end (rejected NOT_FOUND)"] += 1
            return
        self.tally.violation(
            f"{self.label}: unexpected rejected {status.key} for {request_id[:80]!r}: {status.message}"
        )
        super().rejected(request_id, seq, status)  # a refused start ends its request (lost: no terminal)

    def stray(self, request_id: str, kind: str | None) -> None:
        self.tally.violation(f"{self.label}: {kind} for {request_id[:80]!r}, a request never started")

    def late(self, request: Request, kind: str | None, seq: int) -> None:
        if request.stream.judged:  # already accounted for: lost here
            self.tally.lost.append(f"{request.stream.label}: {kind} (seq {seq}) after the terminal")


@dataclass(frozen=True)
class CancelAt:
    """When the client cancels: `delay_s` after the start (0: in the same burst), or after `outputs` outputs."""

    delay_s: float | None = None
    outputs: int | None = None

    @staticmethod
    def draw(rng: random.Random, chance: float) -> CancelAt | None:
        if rng.random() >= chance:
            return None
        return rng.choice(
            (CancelAt(delay_s=0.0), CancelAt(delay_s=rng.uniform(0.02, 1.5)), CancelAt(outputs=rng.randint(1, 4)))
        )


@dataclass
class Outcome:
    """How one request ended, as its stream said."""

    request: Request
    finished: common_pb2.Finished | None = None
    error: Status | None = None
    cancel_sent: bool = False
    call_ended: bool = False  # the call ended before the terminal: lost, unless the client disconnected on purpose
    abandoned: bool = False  # the client closed the channel: no terminal was due


async def follow(session: SoakSession, request: Request, cancel: CancelAt | None) -> Outcome:
    """Read one request's messages to its terminal, sending the Cancel that `cancel` calls for."""
    outcome = Outcome(request)
    assert request.messages is not None

    async def cancel_later(delay: float) -> None:
        await asyncio.sleep(delay)
        # Counted as sent from the moment it is written: the server can answer the Cancel (and `follow` return,
        # cancelling this timer) before the write completes. The write is shielded: cancelling a pending write
        # cancels the whole call, every other request of the session with it.
        outcome.cancel_sent = True
        outcome.cancel_sent = await asyncio.shield(session.follow_up(request, cancel=inference_service_pb2.Cancel()))

    timer = None
    if cancel is not None and cancel.delay_s is not None:
        if cancel.delay_s == 0:
            outcome.cancel_sent = await session.follow_up(request, cancel=inference_service_pb2.Cancel())
        else:
            timer = asyncio.create_task(cancel_later(cancel.delay_s))
    try:
        while True:
            message = await request.messages.get()
            if message is None:
                outcome.call_ended = True
                outcome.abandoned = session.disconnecting
                return outcome
            kind = message.WhichOneof("kind")
            if kind == "finished":
                outcome.finished = message.finished
                return outcome
            if kind == "error":
                outcome.error = status_of(message.error)
                return outcome
            if (
                cancel is not None
                and cancel.outputs is not None
                and request.stream.outputs >= cancel.outputs
                and not outcome.cancel_sent
            ):
                outcome.cancel_sent = await session.follow_up(request, cancel=inference_service_pb2.Cancel())
    finally:
        if timer is not None:
            timer.cancel()


def settle(
    soak: Soak,
    label: str,
    metric: str,
    outcome: Outcome,
    *,
    source_failed: bool = False,
    source_done_first: bool = False,
) -> Status | None:
    """Account one ended session request; returns RESOURCE_EXHAUSTED when it should be retried."""
    stream = outcome.request.stream
    if outcome.call_ended:
        soak.tally.verified(stream, complete=not outcome.abandoned)
        return None
    soak.tally.verified(stream)
    if outcome.finished is not None:
        if outcome.finished.reason == common_pb2.FINISH_REASON_CANCELLED and source_failed:
            soak.tally.cancelled[f"{label}: its generation failed or was cancelled"] += 1
            return None
        soak.count_finished(
            label, outcome.finished, cancel_sent=outcome.cancel_sent, outputs=stream.outputs, metric=metric
        )
        if stream.first is not None and outcome.finished.reason != common_pb2.FINISH_REASON_CANCELLED:
            soak.tally.latency[f"{metric} client, {label}"].append(stream.first - stream.started)
        return None
    error = outcome.error
    assert error is not None
    if error.code is RE and stream.outputs == 0:
        return error
    soak.tally.code(error)
    if source_failed and (error.code, error.reason) in (
        (NOT_FOUND, "UNKNOWN_SOURCE_REQUEST"),
        (INVALID, "SOURCE_ENDED"),
    ):
        soak.tally.events[f"chained synthesis refused: its generation had ended ({error.reason})"] += 1
        return None
    if source_done_first and (error.code, error.reason) == (NOT_FOUND, "UNKNOWN_SOURCE_REQUEST"):
        # The generation completed and left the session before the chained start was read: a client-side race.
        soak.tally.events["chained synthesis refused: its generation had completed (UNKNOWN_SOURCE_REQUEST)"] += 1
        return None
    soak.tally.violation(f"{stream.label}: ended {error.key}: {error.message}")
    return None
