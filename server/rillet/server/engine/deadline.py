"""An earliest-deadline-first pool of worker threads: what the piper engine renders its segments on."""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from rillet.server.errors import Unavailable
from rillet.server.reasons import Reason

__all__ = ["DeadlinePool"]

T = TypeVar("T")


@dataclass(order=True, slots=True)
class _Job:
    deadline: float
    seq: int
    run: Callable[[bool], None] | None = field(compare=False)
    """Runs the job, or with True fails it because the pool is closing; None tells a worker to exit."""


def _closed_error() -> Unavailable:
    return Unavailable("the piper engine is shutting down", reason=Reason.SHUTTING_DOWN)


class DeadlinePool:
    """A fixed set of worker threads that run jobs earliest-deadline-first.

    The engine gives a request's first segment the deadline "now" and each later segment the moment the audio
    already produced for that request would run out if played in real time. So a new request's first audio
    overtakes segments that are not needed yet, and under load every stream stays ahead of its playback.

    A job is told whether it starts alone (no other job running or queued), so it may use every core.

    Invariants: a job cancelled before a worker takes it never runs; a running job always completes its future
    (its caller may have stopped waiting and drops the result); after `close` nothing new starts, and every
    future not yet running fails with Unavailable.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = False
        self._lock = threading.Lock()
        self._running = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True) for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, deadline: float, fn: Callable[[bool], T]) -> concurrent.futures.Future[T]:
        """Queue `fn(alone)` to run when no job with an earlier deadline waits; cancelling the future unqueues it."""
        if self._closed:
            raise _closed_error()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run(closing: bool) -> None:
            if not future.set_running_or_notify_cancel():
                return
            if closing:
                future.set_exception(_closed_error())
                return
            with self._lock:
                self._running += 1
                alone = self._running == 1 and self._queue.empty()
            try:
                result = fn(alone)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._lock:
                    self._running -= 1

        self._queue.put(_Job(deadline, next(self._seq), run))
        return future

    def close(self) -> None:
        """Fail queued jobs and stop the workers once their current job is done (non-blocking)."""
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.run is not None:
                job.run(True)
        for _ in self._threads:
            self._queue.put(_Job(-math.inf, next(self._seq), None))

    def join(self, timeout: float) -> None:
        """Wait (blocking) up to `timeout` seconds in all for the workers to exit."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job.run is None:
                return
            job.run(False)
