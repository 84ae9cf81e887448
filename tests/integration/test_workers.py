"""`rillet serve --workers N`: processes on one port, one health state, signals fanned out, a lost child drains all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from rillet.client import Client
from rillet.server.engine.synthetic import synthetic_text
from tests.conftest import free_port


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def start_group(port: int, workers: int = 2) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", str(port), "--text-engine", "synthetic",
        "--speech-engine", "none", "--workers", str(workers), "--drain-grace-s", "5",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RILLET_SYNTHETIC__TOKENS_PER_SECOND": "0"},
    )  # fmt: skip
    assert process.stderr is not None
    serving = 0
    while serving < workers:
        line = await asyncio.wait_for(process.stderr.readline(), timeout=30)
        assert line, "the group ended before every process served"
        serving += b"serving synthetic-test on" in line
    return process


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.mark.timeout(90)
async def test_workers_share_one_port_and_sigterm_drains_them_all() -> None:
    port = free_port()
    process = await start_group(port)
    try:
        workers = children(process.pid)
        assert len(workers) == 2
        clients = [
            Client.connect(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)
        ]
        try:
            results = await asyncio.gather(
                *(c.generate(f"w{i}", max_tokens=8).collect() for i, c in enumerate(clients))
            )
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        assert [r.text for r in results] == [synthetic_text(f"w{i}", 8) for i in range(8)]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        await stop(process)


@pytest.mark.timeout(90)
async def test_a_worker_that_dies_drains_the_others_and_the_group_exits_non_zero() -> None:
    process = await start_group(free_port())
    try:
        first, second = children(process.pid)
        os.kill(first, signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 1
        assert not alive(second)
    finally:
        await stop(process)


async def test_workers_need_a_fixed_port() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "none", "--workers", "2", stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert b"--workers needs a fixed --port" in stderr
