"""The earliest-deadline-first worker pool piper renders on: order, cancellation, closing, running alone."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from rillet.server.engine.deadline import DeadlinePool
from rillet.server.errors import Unavailable


def _blocked_pool() -> tuple[DeadlinePool, threading.Event]:
    """A one-worker pool whose worker is busy until the returned event is set."""
    pool = DeadlinePool(1, "test-pool")
    release = threading.Event()
    pool.submit(0.0, lambda _alone: release.wait())
    return pool, release


def _recorder(order: list[str], name: str) -> Callable[[bool], str]:
    def run(_alone: bool) -> str:
        order.append(name)
        return name

    return run


def test_the_pool_runs_the_earliest_deadline_first_and_skips_cancelled_jobs() -> None:
    pool, release = _blocked_pool()
    order: list[str] = []
    late = pool.submit(3.0, _recorder(order, "late"))
    cancelled = pool.submit(0.5, _recorder(order, "cancelled"))
    soon = pool.submit(1.0, _recorder(order, "soon"))
    middle = pool.submit(2.0, _recorder(order, "middle"))
    assert cancelled.cancel()
    release.set()
    assert [f.result(timeout=10) for f in (soon, middle, late)] == ["soon", "middle", "late"]
    assert order == ["soon", "middle", "late"]
    pool.close()
    pool.join(10)


def test_closing_the_pool_fails_queued_jobs_and_refuses_new_ones() -> None:
    pool, release = _blocked_pool()
    queued = pool.submit(1.0, lambda _: "never")
    pool.close()
    assert isinstance(queued.exception(timeout=0), Unavailable)
    with pytest.raises(Unavailable):
        pool.submit(1.0, lambda _: "refused")
    release.set()
    pool.join(10)


def test_a_job_knows_whether_it_starts_alone() -> None:
    pool = DeadlinePool(2, "test-pool")
    release = threading.Event()
    first_started = threading.Event()

    def first(alone: bool) -> bool:
        first_started.set()
        release.wait()
        return alone

    lone = pool.submit(0.0, first)
    assert first_started.wait(10)
    beside = pool.submit(0.0, lambda alone: alone)  # starts while the first one runs
    assert beside.result(timeout=10) is False
    release.set()
    assert lone.result(timeout=10) is True
    assert pool.submit(0.0, lambda alone: alone).result(timeout=10) is True  # alone again
    pool.close()
    pool.join(10)
