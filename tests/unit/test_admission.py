"""Admission: FIFO slot hand-off, a bounded queue, no leaked slot when a waiter is cancelled, priority classes."""

from __future__ import annotations

import asyncio

import pytest

from rillet.server.errors import ResourceExhausted
from rillet.server.scheduler import Admission
from rillet.server.types import Priority

INTERACTIVE, BATCH = Priority.INTERACTIVE, Priority.BATCH


async def hold(admission: Admission, started: list[str], name: str, release: asyncio.Event) -> None:
    async with admission.admit():
        started.append(name)
        await release.wait()


async def test_slots_then_fifo_queue_then_refusal() -> None:
    admission = Admission(slots=2, max_queue=2, retry_after_s=0.5)
    release = asyncio.Event()
    started: list[str] = []
    tasks = [asyncio.create_task(hold(admission, started, n, release)) for n in "abcd"]
    await asyncio.sleep(0)
    assert (admission.running, admission.queued) == (2, 2)
    with pytest.raises(ResourceExhausted) as caught:
        async with admission.admit():
            pass
    assert caught.value.retry_after == 0.5
    release.set()
    await asyncio.gather(*tasks)
    assert started == ["a", "b", "c", "d"]
    assert (admission.running, admission.queued) == (0, 0)


async def test_cancelled_waiter_leaves_no_trace() -> None:
    admission = Admission(slots=1, max_queue=4, retry_after_s=1.0)
    release = asyncio.Event()
    started: list[str] = []
    first = asyncio.create_task(hold(admission, started, "first", release))
    waiter = asyncio.create_task(hold(admission, started, "cancelled", release))
    last = asyncio.create_task(hold(admission, started, "last", release))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    assert admission.queued == 1
    release.set()
    await asyncio.gather(first, last)
    assert started == ["first", "last"]
    assert admission.running == 0


async def test_waiter_cancelled_after_the_hand_off_passes_the_slot_on() -> None:
    admission = Admission(slots=1, max_queue=4, retry_after_s=1.0)
    released = asyncio.Event()
    released.set()
    started: list[str] = []
    async with admission.admit():
        second = asyncio.create_task(hold(admission, started, "second", released))
        third = asyncio.create_task(hold(admission, started, "third", released))
        await asyncio.sleep(0)
        assert admission.queued == 2
    # Leaving the block handed the slot to `second`, which has not run yet; cancel it right now.
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    await third
    assert started == ["third"]
    assert (admission.running, admission.queued) == (0, 0)


async def test_waiters_cancelled_while_a_slot_is_released_leave_cleanly() -> None:
    admission = Admission(slots=1, max_queue=8, retry_after_s=1.0)
    release = asyncio.Event()
    release.set()
    started: list[str] = []
    async with admission.admit():
        queued = [asyncio.create_task(hold(admission, started, f"q{i}", release)) for i in range(3)]
        await asyncio.sleep(0)
        assert admission.queued == 3
        # Cancel two waiters, then release the slot in the same tick: `_release` skips (and pops) the cancelled
        # waiters before their tasks run their clean-up, which must not fail (it raised ValueError before).
        for task in queued[:2]:
            task.cancel()
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["CancelledError", "CancelledError", "NoneType"]
    assert started == ["q2"]
    assert (admission.running, admission.queued) == (0, 0)


async def hold_as(admission: Admission, tenant: str, started: list[str], name: str, release: asyncio.Event) -> None:
    async with admission.admit(tenant):
        started.append(name)
        await release.wait()


async def test_a_tenant_may_fill_only_its_share_of_the_queue() -> None:
    admission = Admission(slots=1, max_queue=6, retry_after_s=0.5, tenant_queue_share=0.5)
    release = asyncio.Event()
    started: list[str] = []
    # The running request does not count toward the share; only waiters do.
    tasks = [asyncio.create_task(hold_as(admission, "a", started, f"a{i}", release)) for i in range(4)]
    await asyncio.sleep(0)
    assert (admission.running, admission.queued) == (1, 3)
    with pytest.raises(ResourceExhausted) as caught:
        async with admission.admit("a"):
            pass
    assert caught.value.reason == "TENANT_QUEUE_SHARE"
    assert caught.value.retry_after == 0.5
    assert caught.value.metadata == {"tenant": "a", "share": "3"}
    # Another tenant still gets in; so does the unauthenticated "" tenant, which is never limited by share.
    tasks.append(asyncio.create_task(hold_as(admission, "b", started, "b0", release)))
    tasks += [asyncio.create_task(hold_as(admission, "", started, f"x{i}", release)) for i in range(2)]
    await asyncio.sleep(0)
    assert admission.queued == 6
    with pytest.raises(ResourceExhausted) as full:
        async with admission.admit("c"):
            pass
    assert full.value.reason == "QUEUE_FULL"
    release.set()
    await asyncio.gather(*tasks)
    assert started == ["a0", "a1", "a2", "a3", "b0", "x0", "x1"]
    assert (admission.running, admission.queued) == (0, 0)


async def test_a_tenants_share_frees_as_its_waiters_leave() -> None:
    admission = Admission(slots=1, max_queue=2, retry_after_s=1.0, tenant_queue_share=0.5)
    release = asyncio.Event()
    started: list[str] = []
    async with admission.admit("a"):
        waiting = asyncio.create_task(hold_as(admission, "a", started, "waiting", release))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted):
            async with admission.admit("a"):
                pass
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        # The cancelled waiter gave its place back: the tenant may queue again.
        again = asyncio.create_task(hold_as(admission, "a", started, "again", release))
        await asyncio.sleep(0)
        assert admission.queued == 1
    release.set()
    await again
    # Admitted waiters free their place too: the next one of the tenant queues behind a running request.
    async with admission.admit("a"):
        last = asyncio.create_task(hold_as(admission, "a", started, "last", release))
        await asyncio.sleep(0)
        assert admission.queued == 1
    await last
    assert started == ["again", "last"]
    assert (admission.running, admission.queued) == (0, 0)


async def hold_class(
    admission: Admission, started: list[str], name: str, release: asyncio.Event, priority: Priority, tenant: str = ""
) -> None:
    async with admission.admit(tenant, priority):
        started.append(name)
        await release.wait()


async def run_one_at_a_time(
    admission: Admission, gate: asyncio.Event, waiters: list[tuple[str, Priority]]
) -> list[str]:
    """Queue `waiters` in order behind a held slot, then free the slot: the order they were admitted in."""
    started: list[str] = []
    go = asyncio.Event()
    go.set()
    async with admission.admit():
        tasks = [asyncio.create_task(hold_class(admission, started, n, go, p)) for n, p in waiters]
        await asyncio.sleep(0)
        assert admission.queued == len(waiters)
        await gate.wait()
    await asyncio.gather(*tasks)
    return started


async def test_interactive_waiters_go_before_batch_ones() -> None:
    admission = Admission(slots=1, max_queue=8, retry_after_s=1.0, batch_every=4)
    gate = asyncio.Event()
    gate.set()
    order = await run_one_at_a_time(
        admission, gate, [("b1", BATCH), ("b2", BATCH), ("i1", INTERACTIVE), ("i2", INTERACTIVE)]
    )
    assert order == ["i1", "i2", "b1", "b2"]


async def test_batch_is_never_starved_one_slot_in_batch_every_goes_to_it() -> None:
    admission = Admission(slots=1, max_queue=32, retry_after_s=1.0, batch_every=3)
    gate = asyncio.Event()
    gate.set()
    waiters = [("b1", BATCH), ("b2", BATCH), *((f"i{n}", INTERACTIVE) for n in range(1, 8))]
    order = await run_one_at_a_time(admission, gate, waiters)
    # Two interactive hand-overs, then the oldest batch request: the bound on a batch request's wait.
    assert order == ["i1", "i2", "b1", "i3", "i4", "b2", "i5", "i6", "i7"]
    assert (admission.running, admission.queued) == (0, 0)


async def test_batch_fills_only_its_share_of_the_queue_and_interactive_finds_room() -> None:
    admission = Admission(slots=1, max_queue=4, retry_after_s=1.0, batch_queue_share=0.5)
    release = asyncio.Event()
    started: list[str] = []
    running = asyncio.create_task(hold_class(admission, started, "run", release, INTERACTIVE))
    batch = [asyncio.create_task(hold_class(admission, started, f"b{n}", release, BATCH)) for n in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as caught:
        async with admission.admit("", BATCH):
            pass
    assert caught.value.metadata["priority"] == "batch"
    interactive = [asyncio.create_task(hold_class(admission, started, f"i{n}", release, INTERACTIVE)) for n in range(2)]
    await asyncio.sleep(0)
    assert (admission.queued, admission.queued_batch) == (4, 2)
    release.set()
    await asyncio.gather(running, *batch, *interactive)
    assert started == ["run", "i0", "i1", "b0", "b1"]


async def test_a_tenants_share_of_the_queue_counts_both_classes() -> None:
    admission = Admission(slots=1, max_queue=4, retry_after_s=1.0, tenant_queue_share=0.5)
    release = asyncio.Event()
    started: list[str] = []
    running = asyncio.create_task(hold_class(admission, started, "run", release, INTERACTIVE, "other"))
    mine = [
        asyncio.create_task(hold_class(admission, started, "b", release, BATCH, "acme")),
        asyncio.create_task(hold_class(admission, started, "i", release, INTERACTIVE, "acme")),
    ]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as caught:
        async with admission.admit("acme", INTERACTIVE):
            pass
    assert caught.value.reason == "TENANT_QUEUE_SHARE"
    release.set()
    await asyncio.gather(running, *mine)


async def test_batch_holds_at_most_its_share_of_slots_and_interactive_starts_at_once() -> None:
    admission = Admission(slots=4, max_queue=8, retry_after_s=1.0, batch_slot_share=0.5)
    release_batch, release_interactive = asyncio.Event(), asyncio.Event()
    started: list[str] = []
    batch = [asyncio.create_task(hold_class(admission, started, f"b{n}", release_batch, BATCH)) for n in range(3)]
    await asyncio.sleep(0)
    assert started == ["b0", "b1"]  # two slots stay free: b2 waits at the batch share
    assert (admission.running, admission.running_batch, admission.queued_batch) == (2, 2, 1)
    interactive = [
        asyncio.create_task(hold_class(admission, started, f"i{n}", release_interactive, INTERACTIVE)) for n in range(2)
    ]
    await asyncio.sleep(0)
    assert started == ["b0", "b1", "i0", "i1"]  # at once, ahead of the waiting batch request
    release_interactive.set()
    await asyncio.gather(*interactive)
    assert started == ["b0", "b1", "i0", "i1"]  # the interactive slots freed are not batch's
    release_batch.set()
    await asyncio.gather(*batch)
    assert started[-1] == "b2"
    assert (admission.running, admission.running_batch, admission.queued) == (0, 0, 0)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_batch_leaves_free_half_again_the_recent_interactive_peak_and_one_until_it_decays() -> None:
    clock = Clock()
    admission = Admission(
        slots=16, max_queue=32, retry_after_s=1.0, batch_slot_share=0.75, reserve_half_life_s=10.0, clock=clock
    )
    assert admission.batch_cap == 12  # no interactive demand yet: the share alone
    release_i, release_b = asyncio.Event(), asyncio.Event()
    started: list[str] = []
    first = [asyncio.create_task(hold_class(admission, started, f"i{n}", release_i, INTERACTIVE)) for n in range(4)]
    await asyncio.sleep(0)
    assert admission.batch_cap == 9  # 16 slots less 1.5 x the peak of 4, and one
    batch = [asyncio.create_task(hold_class(admission, started, f"b{n}", release_b, BATCH)) for n in range(12)]
    await asyncio.sleep(0)
    assert (admission.running_batch, admission.queued_batch) == (9, 3)
    release_i.set()
    await asyncio.gather(*first)
    assert (admission.running, admission.running_batch) == (9, 9)  # the slots the burst used stay free

    # a bigger burst comes: all of it (the reserve, 7) starts at once beside the saturating batch load
    release_i = asyncio.Event()
    burst = [asyncio.create_task(hold_class(admission, started, f"j{n}", release_i, INTERACTIVE)) for n in range(7)]
    await asyncio.sleep(0)
    assert {f"j{n}" for n in range(7)} <= set(started)
    assert admission.batch_cap == 4  # the peak is 7 now: batch slots freed go to no batch request
    release_i.set()
    await asyncio.gather(*burst)

    clock.now += 10.0  # one half-life: the peak of 7 is remembered as 3.5
    assert admission.batch_cap == 9
    clock.now += 100.0  # long after: the share alone again, and the next arrival refills from the waiting batch
    assert admission.batch_cap == 12
    late = asyncio.create_task(hold_class(admission, started, "b12", release_b, BATCH))
    await asyncio.sleep(0)
    assert (admission.running_batch, admission.queued_batch) == (12, 1)
    assert "b12" not in started  # it queues behind the older batch requests
    release_b.set()
    await asyncio.gather(*batch, late)
    assert (admission.running, admission.running_batch, admission.queued) == (0, 0, 0)
    assert started[-1] == "b12"


async def test_a_released_batch_slot_refills_every_slot_the_decayed_cap_allows() -> None:
    clock = Clock()
    admission = Admission(
        slots=6, max_queue=16, retry_after_s=1.0, batch_slot_share=1.0, reserve_half_life_s=1.0, clock=clock
    )
    release_i = asyncio.Event()
    started: list[str] = []
    burst = [asyncio.create_task(hold_class(admission, started, f"i{n}", release_i, INTERACTIVE)) for n in range(4)]
    await asyncio.sleep(0)
    first = asyncio.Event()
    batch_release = [first] + [asyncio.Event() for _ in range(4)]
    batch = [asyncio.create_task(hold_class(admission, started, f"b{n}", batch_release[n], BATCH)) for n in range(5)]
    await asyncio.sleep(0)
    assert (admission.running_batch, admission.queued_batch) == (1, 4)  # cap: 6 - 4 - 1
    release_i.set()
    await asyncio.gather(*burst)
    clock.now += 60.0  # the burst is long forgotten: batch may hold 6
    first.set()
    await batch[0]
    await asyncio.sleep(0)
    assert (admission.running_batch, admission.queued_batch) == (4, 0)  # one release filled four slots
    for event in batch_release:
        event.set()
    await asyncio.gather(*batch)
    assert (admission.running, admission.queued) == (0, 0)
