"""The thread governor: llama.cpp's thread count chosen from how busy other processes keep this process's cores."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuSample", "ThreadGovernor", "read_cpu_sample"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds: every process on this process's cores, and this process alone."""

    busy_s: float
    ours_s: float


def read_cpu_sample() -> CpuSample | None:
    """Busy time of this process's CPUs (/proc/stat: user, nice, system, irq, softirq) and its own CPU time.

    None where /proc/stat is unreadable (not Linux): the governor then keeps its thread count.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        fields = rest.split()
        busy += int(fields[0]) + int(fields[1]) + int(fields[2]) + int(fields[5]) + int(fields[6])
    times = os.times()
    return CpuSample(busy / _CLOCK_TICKS, times.user + times.system)


class ThreadGovernor:
    """Chooses llama.cpp's thread count (`n_threads=0`) from how busy other processes keep this process's cores.

    Why: llama.cpp's CPU threads meet at a barrier after every graph node and (OpenMP) spin while they wait, so one
    thread more than the free cores collapses throughput. Measured on 2 cores (Gemma 3 270M, 8 streams): idle
    machine, 2 threads ≈1.5x the tokens/s of 1; one busy process beside it, 2 threads ≈0.6x (and ≈0.45x for one
    stream). So: all cores while others leave them free; one core fewer for each core others keep busy.

    Before each step the engine thread calls `observe`; every `interval_s` it measures the CPU time other processes
    used on our cores over the window (busy time minus ours; our own spinning counts as ours; a window longer than
    4 intervals, the engine having idled, only restarts the measure). Above `busy_cores` of a core, the count drops
    at once to `cores - ceil(others - busy_cores)` (at least 1); it rises back to all cores only after
    `calm_windows` windows in a row below `free_cores`. Where the cores are shared with processes this one cannot
    see apart (a container on a busy host without a cpuset), it errs toward fewer threads: set n_threads there.
    Not thread-safe: the engine thread owns it.
    """

    def __init__(
        self,
        cores: int,
        *,
        interval_s: float = 1.0,
        busy_cores: float = 0.25,
        free_cores: float = 0.1,
        calm_windows: int = 2,
        sample: Callable[[], CpuSample | None] = read_cpu_sample,
    ) -> None:
        self.cores = max(1, cores)
        self.threads = self.cores
        self.others_cores = 0.0
        self._interval = interval_s
        self._busy = busy_cores
        self._free = free_cores
        self._calm_needed = calm_windows
        self._calm = 0
        self._sample = sample
        self._last: tuple[float, CpuSample] | None = None

    def observe(self, now: float) -> int | None:
        """Take a sample when a window has passed; the new thread count when it should change, else None."""
        if self._last is not None and now - self._last[0] < self._interval:
            return None
        sample = self._sample()
        if sample is None:
            return None
        last, self._last = self._last, (now, sample)
        if last is None or now - last[0] > 4 * self._interval:
            return None  # first sample, or the engine sat idle: what ran meanwhile says little about now
        elapsed = now - last[0]
        others = ((sample.busy_s - last[1].busy_s) - (sample.ours_s - last[1].ours_s)) / elapsed
        self.others_cores = max(0.0, others)
        wanted = self.decide(self.others_cores)
        if wanted == self.threads:
            return None
        self.threads = wanted
        return wanted

    def decide(self, others_cores: float) -> int:
        """The thread count for a window in which other processes used `others_cores` of our cores."""
        if others_cores > self._busy:
            self._calm = 0
            return min(self.threads, max(1, self.cores - math.ceil(others_cores - self._busy)))
        if others_cores < self._free:
            self._calm += 1
            return self.cores if self._calm >= self._calm_needed else self.threads
        self._calm = 0
        return self.threads
