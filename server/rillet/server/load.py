"""The server's load, measured one way for every reader: GetLoad and WatchLoad, ORCA reports, the router gauges."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from rillet.server.engine.base import KvCacheReporting
from rillet.server.scheduler import Router
from rillet.server.types import ModelKind

__all__ = ["EngineGauges", "EngineLoad", "LoadBoard", "ServerLoad", "utilization"]

SAMPLE_GAP_S = 0.5
"""Counters are sampled at most this often (when the load is read: there is no timer); rates span the samples."""


def utilization(running: int, waiting: int, slots: int, kv_cache: float | None) -> float:
    """An engine's utilization in [0, 1]: the larger of (running + waiting) / slots and its KV cache use, capped.

    What saturates Rillet: slots (requests beyond them wait) and, on engines with a KV cache, the cache (a full one
    makes requests wait or be preempted). 1 means a new request waits. Linear in the load below saturation, so that
    gRPC's weighted_round_robin weight (requests per second / utilization) estimates each replica's capacity.
    """
    occupied = (running + waiting) / slots if slots else 0.0
    return min(1.0, max(occupied, kv_cache or 0.0))


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One engine's load (control_service.proto EngineLoad documents each field)."""

    engine: str
    kind: ModelKind
    running: int
    waiting: int
    waiting_batch: int
    slots: int
    kv_cache_utilization: float | None
    utilization: float
    requests_per_second: float
    tokens_per_second: float
    characters_per_second: float


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """The whole server's load: its busiest engine's utilization, the rates of all, and its calls."""

    time: float  # seconds since the epoch
    engines: tuple[EngineLoad, ...]
    utilization: float
    requests_per_second: float
    cpu_utilization: float
    open_calls: int
    draining: bool


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """One engine's instantaneous load: what routers outside gRPC read from Prometheus (telemetry/instruments.py)."""

    engine: str
    running: int
    waiting: int
    kv_cache_utilization: float | None


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float  # monotonic
    cpu_s: float
    counts: tuple[tuple[int, int, int], ...]  # per engine: requests, tokens, characters ended


class LoadBoard:
    """Reads the admission queues, the engines and their throughput counters into a ServerLoad.

    Rates (requests, tokens and characters per second, CPU) are differences of monotonic counters over the recent
    `window_s`: counters are sampled when the load is read, at most every SAMPLE_GAP_S, and the oldest sample still
    inside the window (or, early on, the one taken at construction) is the base. So every reader, at any interval,
    sees rates over the same recent past, and nothing runs while nobody reads.
    """

    def __init__(
        self,
        router: Router,
        *,
        window_s: float,
        open_calls: Callable[[], int],
        draining: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._router = router
        self._window_s = window_s
        self._open_calls = open_calls
        self._draining = draining
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._samples: collections.deque[_Sample] = collections.deque([_Sample(clock(), cpu_clock(), ())])

    def snapshot(self) -> ServerLoad:
        """The load now. Engines are listed once the server is warm (none while it warms up)."""
        queues = self._router.queues() if self._router.started else []
        now = _Sample(
            self._clock(),
            self._cpu_clock(),
            tuple((q.throughput.requests, q.throughput.tokens, q.throughput.characters) for q in queues),
        )
        base = self._advance(now)
        elapsed = max(now.at - base.at, 1e-9)
        engines: list[EngineLoad] = []
        for index, (engine, admission, _) in enumerate(queues):
            requests, tokens, characters = (
                (c - b) / elapsed
                for c, b in zip(now.counts[index], _at(base.counts, index), strict=True)  # base: zeros before warm
            )
            kv = engine.kv_cache_utilization() if isinstance(engine, KvCacheReporting) else None
            running, waiting = admission.running, admission.queued
            engines.append(
                EngineLoad(
                    engine=engine.name,
                    kind=engine.serves,
                    running=running,
                    waiting=waiting,
                    waiting_batch=admission.queued_batch,
                    slots=admission.slots,
                    kv_cache_utilization=kv,
                    utilization=utilization(running, waiting, admission.slots, kv),
                    requests_per_second=requests,
                    tokens_per_second=tokens,
                    characters_per_second=characters,
                )
            )
        return ServerLoad(
            time=time.time(),
            engines=tuple(engines),
            utilization=max((e.utilization for e in engines), default=0.0),
            requests_per_second=sum(e.requests_per_second for e in engines),
            cpu_utilization=(now.cpu_s - base.cpu_s) / elapsed / self._cores,
            open_calls=self._open_calls(),
            draining=self._draining(),
        )

    def gauges(self) -> list[EngineGauges]:
        """Each engine's running and waiting requests and KV cache use, as `snapshot` reports them.

        Safe from any thread (a metrics exporter's): it reads counters and touches none of the rate samples.
        """
        if not self._router.started:
            return []
        return [
            EngineGauges(
                engine.name,
                admission.running,
                admission.queued,
                engine.kv_cache_utilization() if isinstance(engine, KvCacheReporting) else None,
            )
            for engine, admission, _ in self._router.queues()
        ]

    def _advance(self, now: _Sample) -> _Sample:
        """Keep `now` as a sample when the last is SAMPLE_GAP_S old, drop those past the window; the base to use."""
        samples = self._samples
        if now.at - samples[-1].at >= SAMPLE_GAP_S:
            samples.append(now)
        while len(samples) > 1 and samples[1].at <= now.at - self._window_s:
            samples.popleft()  # samples[1] is inside the window's start: samples[0] is no longer needed
        return samples[0]  # never `now`: the construction's sample stays until a newer one is past the window


def _at(counts: tuple[tuple[int, int, int], ...], index: int) -> tuple[int, int, int]:
    return counts[index] if index < len(counts) else (0, 0, 0)
