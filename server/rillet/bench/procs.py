"""Server processes for the harnesses, and what /proc says about them (memory, CPU, threads, open files)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

from rillet.bench.results import BIN

CLK_TCK = os.sysconf("SC_CLK_TCK")
FLOOR_SERVING = rb"floor serving on [\d.]+:(\d+)"
RILLET_SERVING = rb"serving .* on [\d.]+:(\d+)"
"""What each server prints once it serves, with the port it bound."""
_DRAINS: set[asyncio.Task[None]] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (via /proc/*/task/*/children)."""
    pids, index = [pid], 0
    while index < len(pids):
        current = pids[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    pids += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set of `pid` and its descendants (VmRSS)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants, in clock ticks' resolution."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


def scheduled_seconds(pid: int) -> float:
    """CPU time a process has run, every thread, from the scheduler's own nanosecond counts."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


class RssSampler:
    """Polls a process tree's RSS on a thread while a level runs; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._pid = pid
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = rss_bytes(pid)
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_bytes(self._pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self._pid))


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_healthy(target: str, wait_s: float = 300.0) -> None:
    """Return once `rillet health` says `target` serves (raises after `wait_s`)."""
    subprocess.run(
        [str(BIN / "rillet"), "health", "--target", target, "--wait", str(wait_s)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=wait_s + 20,
    )


async def start_server(
    command: list[str], env: dict[str, str], pattern: bytes
) -> tuple[asyncio.subprocess.Process, int]:
    """Start a server printing `pattern` (with the port it bound) once it serves; its later output is dropped."""
    process = await asyncio.create_subprocess_exec(
        *command, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    while line := await asyncio.wait_for(process.stdout.readline(), timeout=60):
        if match := re.search(pattern, line):
            task = asyncio.create_task(_drain(process.stdout))
            _DRAINS.add(task)
            task.add_done_callback(_DRAINS.discard)
            return process, int(match.group(1))
    raise RuntimeError(f"{command[:3]} never said where it serves")


async def served_ports(stderr: asyncio.StreamReader, timeout_s: float) -> tuple[int, int | None]:
    """Read `rillet serve`'s log until it serves: its gRPC port, and its Prometheus port when it serves one."""
    port, prometheus = 0, None
    while not port:
        line = (await asyncio.wait_for(stderr.readline(), timeout=timeout_s)).decode()
        if not line:
            raise RuntimeError("the server exited before serving")
        if match := re.search(r"prometheus metrics on http://[\d.]+:(\d+)/metrics", line):
            prometheus = int(match.group(1))
        if match := re.search(r"serving .* on [\d.]+:(\d+)", line):
            port = int(match.group(1))
    return port, prometheus


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def revision(root: Path) -> str:
    """The commit checked out at `root`, marked when the working tree had uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True)
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
