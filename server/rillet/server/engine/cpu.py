"""The CPUs this process may use: what the CPU engines size their threads from."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

__all__ = ["available_cores"]


def available_cores() -> int:
    """Logical CPUs this process may run on: its affinity set, capped by a cgroup v2 CPU quota when one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)
