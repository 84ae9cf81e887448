"""The real `rillet serve` process: SIGTERM drains in-flight work, refuses new work, then exits cleanly."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from rillet.client import Client, Finished, FinishReason, TokenDelta, UnavailableError
from rillet.server.engine.synthetic import synthetic_text


async def start_server(*flags: str, **env: str) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "none", *flags,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RILLET_SYNTHETIC__TOKENS_PER_SECOND": "40", **env},
    )  # fmt: skip
    assert process.stderr is not None
    while line := await asyncio.wait_for(process.stderr.readline(), timeout=30):
        if match := re.search(rb"serving .* on [\d.]+:(\d+)", line):
            return process, int(match.group(1))
    raise AssertionError("the server never said where it serves")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_then_exits(sig: signal.Signals) -> None:
    process, port = await start_server("--drain-grace-s", "10")
    try:
        async with Client.connect(f"127.0.0.1:{port}") as client, client.session() as session:
            in_flight = await session.generate("drain me", max_tokens=40)
            events = aiter(in_flight)
            first = await anext(events)
            assert isinstance(first, TokenDelta)
            process.send_signal(sig)
            await asyncio.sleep(0.2)
            with pytest.raises(UnavailableError):
                await (await session.generate("refused", max_tokens=2)).collect()
            rest = [e async for e in events]
            last = rest[-1]
            assert not isinstance(last, TokenDelta)
            assert last.reason is FinishReason.LENGTH
            text = first.text + "".join(e.text for e in rest if isinstance(e, TokenDelta))
            assert text == synthetic_text("drain me", 40)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.timeout(120)
async def test_sigterm_with_200_active_streams_completes_or_refuses_each_within_the_grace() -> None:
    process, port = await start_server("--drain-grace-s", "3", RILLET_SYNTHETIC__SLOTS="256")
    outcomes: collections.Counter[str] = collections.Counter()
    try:
        async with Client.connect(f"127.0.0.1:{port}") as client, client.session() as session:
            # 40 tokens/s: short requests finish within the grace, long ones cannot and must end UNAVAILABLE.
            streams = [await session.generate(f"s{i}", max_tokens=20 if i % 2 else 1000) for i in range(200)]
            firsts = [aiter(s) for s in streams]
            await asyncio.gather(*(anext(f) for f in firsts))  # all 200 are streaming
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            async def rest(index: int) -> None:
                try:
                    events = [e async for e in firsts[index]]
                except UnavailableError:
                    outcomes["unavailable"] += 1
                    return
                last = events[-1]
                assert isinstance(last, Finished)
                assert last.reason is FinishReason.LENGTH
                outcomes["completed"] += 1

            await asyncio.gather(*(rest(i) for i in range(200)))
            ended = time.monotonic() - signalled
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert outcomes == {"completed": 100, "unavailable": 100}
    assert ended < 3 + 2  # every stream ended by the grace (plus the time to say so)


async def test_a_misconfigured_voice_fails_the_start_with_status_2_and_says_why(tmp_path: Path) -> None:
    """A configuration error is no engine death: the server never serves, says what to fix, and exits 2."""
    missing = tmp_path / "nowhere.onnx"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "piper",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RILLET_PIPER__BUNDLED_VOICE": "false", "RILLET_PIPER__VOICE_PATHS": f'["{missing}"]'},
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert b"invalid configuration" in stderr
    assert b"piper voice 'nowhere' cannot be used" in stderr
    assert b"Traceback" not in stderr
