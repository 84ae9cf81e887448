"""The real `rillet serve` process: SIGTERM drains in-flight work, refuses new work, then exits cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

from rillet.client import Client, FinishReason, TokenDelta, UnavailableError
from rillet.server.engine.synthetic import synthetic_text


async def start_server(*flags: str) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "none", *flags,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RILLET_SYNTHETIC__TOKENS_PER_SECOND": "40"},
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
