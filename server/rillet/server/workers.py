"""`rillet serve --workers N`: N server processes on one port (SO_REUSEPORT), supervised as one.

The parent serves nothing: it starts N children, each a whole `rillet serve` (its own engines, its own event loop and
gRPC server) bound to the same port with SO_REUSEPORT, so the kernel spreads new connections over them. One health
state for the group: SIGTERM or SIGINT to the parent is sent on to every child (each drains as a lone server does);
a child that exits on its own (its engine died, it crashed) makes the parent drain the others and exit 1, so a
supervisor above restarts the whole group rather than serving with fewer processes than asked for.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from types import FrameType

log = logging.getLogger(__name__)


def supervise(command: Sequence[str], count: int, env: Mapping[str, str]) -> int:
    """Run `count` copies of `command` until all have exited; returns the group's exit status (0 only if all were)."""
    children = {child.pid: child for child in (subprocess.Popen(list(command), env=dict(env)) for _ in range(count))}
    log.info("supervising %d server processes: %s", count, ", ".join(str(pid) for pid in children))
    stopping = False
    status = 0

    def stop_all(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(child.returncode is None for child in children.values()):
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            child = children.get(pid)
            if child is None:
                continue
            child.returncode = os.waitstatus_to_exitcode(wait_status)
            if not stopping:
                log.error("server process %d exited (%d) on its own: draining the others", pid, child.returncode)
                status = 1
                stop_all()
            elif child.returncode != 0:
                status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
