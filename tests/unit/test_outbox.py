"""Outbox and OutboundBudget: contiguous seq, coalescing, the byte bounds, the stall clock, discard."""

from __future__ import annotations

import asyncio

from rillet.server.errors import DeadlineExceeded
from rillet.server.session.outbox import OutboundBudget, Outbox, wire_size
from rillet.server.types import AudioChunk, Failed, Finished, FinishReason, Timings, TokenDelta, Usage

FINISHED = Finished(FinishReason.LENGTH, Usage(), Timings(0.0, None, None, 0.0))


def make(limit: int = 1024, budget: OutboundBudget | None = None) -> tuple[Outbox, list[Outbox]]:
    ready: list[Outbox] = []
    return Outbox("r", budget or OutboundBudget(1 << 20), limit, ready.append), ready


async def test_deltas_coalesce_audio_queues_and_seq_is_contiguous_across_takes() -> None:
    outbox, ready = make()
    await outbox.put(TokenDelta("a", (1,)))
    await outbox.put(TokenDelta("b", (2,)))
    assert ready == [outbox]  # signalled once while queued
    first = outbox.take()
    assert [(o.seq, o.payload) for o in first] == [(0, TokenDelta("ab", (1, 2)))]
    outbox.delivered()
    chunk = AudioChunk(b"\0\0" * 4, 16000, 1, 0)
    await outbox.put(chunk)
    await outbox.put(TokenDelta("c", (3,)))
    outbox.end(FINISHED)
    outbox.end(Failed(DeadlineExceeded("ignored: the first terminal wins")))
    second = outbox.take()
    assert [o.seq for o in second] == [1, 2, 3]
    assert [o.payload for o in second] == [TokenDelta("c", (3,)), chunk, FINISHED]
    assert outbox.done
    assert outbox.take() == []  # the terminal is taken exactly once


async def test_put_waits_at_the_request_bound_until_the_writer_takes() -> None:
    outbox, _ = make(limit=100)
    await outbox.put(TokenDelta("x" * 60, ()))
    blocked = asyncio.create_task(outbox.put(TokenDelta("y" * 60, ())))
    await asyncio.sleep(0)
    assert not blocked.done()  # 120 pending bytes ≥ 100: the engine stream pauses
    [output] = outbox.take()
    assert output.payload == TokenDelta("x" * 60 + "y" * 60, ())  # bound plus one output at most
    await blocked


async def test_put_waits_again_each_time_the_bound_is_reached() -> None:
    outbox, _ = make(limit=100)
    for round_ in range(3):  # the wait's event is made once and cleared before every later wait
        await outbox.put(TokenDelta("x" * 60, ()))
        blocked = asyncio.create_task(outbox.put(TokenDelta("y" * 60, ())))
        await asyncio.sleep(0)
        assert not blocked.done(), round_
        outbox.take()
        await blocked
        outbox.take()
        outbox.delivered()


async def test_the_session_budget_pauses_every_outbox_until_delivery() -> None:
    budget = OutboundBudget(100)
    first, _ = make(budget=budget)
    second, _ = make(budget=budget)
    filling = asyncio.create_task(first.put(TokenDelta("x" * 120, ())))
    await asyncio.sleep(0)
    assert budget.full
    assert not filling.done()  # the producer that filled the budget waits too
    blocked = asyncio.create_task(second.put(TokenDelta("y", ())))
    await asyncio.sleep(0)
    assert not blocked.done()
    first.take()
    await asyncio.sleep(0)
    assert not blocked.done()  # taken is not delivered: the writer still holds those bytes
    first.delivered()
    await asyncio.gather(filling, blocked)
    assert budget.used == wire_size(TokenDelta("y", ()))


async def test_stall_clock_runs_only_while_an_output_waits_for_the_client() -> None:
    outbox, _ = make()
    assert outbox.waiting_since is None
    await outbox.put(TokenDelta("a", ()))
    since = outbox.waiting_since
    assert since is not None
    outbox.take()
    await outbox.put(TokenDelta("b", ()))  # arrives while the writer still sends "a"
    assert outbox.waiting_since == since  # the oldest undelivered output sets the clock
    outbox.delivered()
    assert outbox.waiting_since is not None  # "b" still waits
    assert outbox.waiting_since >= since
    outbox.take()
    outbox.delivered()
    assert outbox.waiting_since is None


async def test_discard_drops_pending_outputs_without_a_seq_gap() -> None:
    budget = OutboundBudget(1 << 20)
    outbox, _ = make(budget=budget)
    await outbox.put(TokenDelta("sent", ()))
    assert [o.seq for o in outbox.take()] == [0]
    outbox.delivered()
    await outbox.put(TokenDelta("dropped", ()))
    outbox.discard()
    error = Failed(DeadlineExceeded("stalled"))
    outbox.end(error)
    assert [(o.seq, o.payload) for o in outbox.take()] == [(1, error)]
    outbox.delivered()
    assert budget.used == 0


async def test_a_client_taking_output_at_its_own_pace_is_making_progress_however_long_a_batch_takes() -> None:
    """A listener playing audio at real time: the writer took 60 chunks at once, and the transport takes one every
    0.1 s (the listener's pace) while the engine queues more. The batch takes 6 s to go; no output ever waits 0.5 s
    without the client taking something, so the clock never reaches 0.5 s. Swept at fake times: no clock here."""
    outbox, _ = make(limit=1 << 30)
    chunk = AudioChunk(b"\0\0" * 800, 8000, 1, 0)
    for _ in range(60):
        await outbox.put(chunk)
    start = outbox.waiting_for_client(0.0)
    assert start is not None
    now = start
    for _ in outbox.take():
        await outbox.put(chunk)  # the engine is faster than the listener: there is always more waiting
        now += 0.1
        outbox.sent += 1  # the transport took one
        waiting = outbox.waiting_for_client(now)
        assert waiting is not None
        assert now - waiting < 0.5


async def test_a_client_that_takes_nothing_stalls_from_its_last_progress() -> None:
    outbox, _ = make()
    await outbox.put(TokenDelta("a", ()))
    await outbox.put(AudioChunk(b"\0\0", 8000, 1, 0))
    outbox.take()
    outbox.sent += 1  # the delta went out, then nothing more
    assert outbox.waiting_for_client(100.0) == 100.0  # progress seen at this look
    assert outbox.waiting_for_client(101.0) == 100.0  # none since: the clock runs from the last progress
    assert outbox.waiting_for_client(131.0) == 100.0
