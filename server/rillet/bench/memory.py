"""Server memory: RSS of `rillet serve` idle, per idle session, and per active generation or synthesis request.

Starts `rillet serve` (the default engines: llamacpp and piper, or --engines synthetic for the serving path alone),
reads its resident set (VmRSS of the process tree) once warm, then with N idle sessions open on one channel, then
with M generations streaming at once (each past its first token, none finished), then with K syntheses streaming.
Each step is repeated (--rounds, everything closed in between) and the per-item cost is the RSS growth divided by
the count; the median and the spread are reported. RSS only grows where Python or the engines allocate, so these
are upper bounds on what one more session or request costs.
Run: .venv/bin/python bench/bench_memory.py [--sessions 200] [--generations 16] [--syntheses 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from rillet.bench.procs import free_port, rss_bytes, wait_healthy
from rillet.bench.results import BIN, RESULTS, stamp
from rillet.bench.stats import spread
from rillet.client import AudioChunk, Client, TokenDelta

LONG_TEXT = " ".join(f"This is sentence number {n} of a long text read aloud, slowly." for n in range(40))
MB = 2**20


@contextlib.contextmanager
def server(port: int, engines: str, extra_env: dict[str, str]) -> Iterator[int]:
    env = {**os.environ, "RILLET_PORT": str(port), "RILLET_HOST": "127.0.0.1", "RILLET_LOG_LEVEL": "WARNING"}
    env.update(extra_env)
    if engines == "synthetic":
        env.update({"RILLET_TEXT_ENGINE": "synthetic", "RILLET_SPEECH_ENGINE": "none"})
    process = subprocess.Popen([str(BIN / "rillet"), "serve"], env=env)
    try:
        wait_healthy(f"127.0.0.1:{port}")
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


async def settle(pid: int) -> float:
    """RSS in MB once allocations have settled (two reads 0.3 s apart within 1 MB)."""
    last = rss_bytes(pid)
    for _ in range(10):
        await asyncio.sleep(0.3)
        now = rss_bytes(pid)
        if abs(now - last) < MB:
            return now / MB
        last = now
    return last / MB


async def idle_sessions(client: Client, pid: int, count: int) -> float:
    """MB per idle session: `count` sessions opened (each a bidi stream), nothing sent."""
    before = await settle(pid)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            session = await stack.enter_async_context(client.session())
            async for _ in await session.generate("x", max_tokens=1):  # the session is live server-side
                pass
        during = await settle(pid)
    return (during - before) / count


async def active_streams(pid: int, count: int, open_stream: Callable[[int], Any], first: type) -> float:
    """RSS per stream while `count` streams opened by `open_stream(i)` each have their first output (a `first`)."""
    before = await settle(pid)
    streams = [open_stream(i) for i in range(count)]
    try:
        for stream in streams:
            assert isinstance(await anext(aiter(stream)), first)
        during = await settle(pid)
    finally:
        for stream in streams:
            await stream.aclose()
    return (during - before) / count


async def measure(port: int, pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, list[float]] = {"idle_rss_mb": [], "per_idle_session_mb": [], "per_generation_mb": []}
    if opts.engines == "default":
        out["per_synthesis_mb"] = []
    async with Client.connect(f"127.0.0.1:{port}") as client:
        for _ in range(opts.rounds):
            out["idle_rss_mb"].append(await settle(pid))
            out["per_idle_session_mb"].append(await idle_sessions(client, pid, opts.sessions))
            out["per_generation_mb"].append(
                await active_streams(
                    pid,
                    opts.generations,
                    lambda i: client.generate(f"Story {i}: once upon a time", max_tokens=400, temperature=0.0),
                    TokenDelta,
                )
            )
            if opts.engines == "default":
                out["per_synthesis_mb"].append(
                    await active_streams(pid, opts.syntheses, lambda _: client.synthesize(LONG_TEXT), AudioChunk)
                )
    return {key: spread(values) for key, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", choices=("default", "synthetic"), default="default")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument("--syntheses", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE for the server (e.g. a config)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    opts = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in opts.server_env)
    port = free_port()
    with server(port, opts.engines, extra_env) as pid:
        results = asyncio.run(measure(port, pid, opts))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "engines": opts.engines,
        "sessions": opts.sessions,
        "generations": opts.generations,
        "syntheses": opts.syntheses,
        "rounds": opts.rounds,
        "server_env": extra_env,
        "load_avg_1m": os.getloadavg()[0],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = stamp("" if opts.engines == "default" else opts.engines, opts.tag)
    (RESULTS / f"memory_{run}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# Server memory {meta['date']} ({meta['machine']}; engines: {opts.engines})", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        f"Median (min-max) over {opts.rounds} rounds. Per-item figures are the RSS growth divided by the count, in KB; "
        "the first round also pays first-use growth (allocator arenas), so its idle RSS is the lowest.",
        "",
        "| what | value |",
        "|---|---|",
    ]
    for key, value in results.items():
        if key == "idle_rss_mb":
            lines.append(f"| idle RSS (MB) | {value['median']:.0f} ({value['min']:.0f}-{value['max']:.0f}) |")
        else:
            name = key.removesuffix("_mb").replace("_", " ")
            low, mid, high = (value[k] * 1024 for k in ("min", "median", "max"))
            lines.append(f"| {name} (KB) | {mid:.0f} ({low:.0f}-{high:.0f}) |")
    report = "\n".join(lines) + "\n"
    (RESULTS / f"memory_{run}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
