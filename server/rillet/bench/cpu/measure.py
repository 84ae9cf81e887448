"""One level of one system in one sweep: a closed loop timed from the client, with the server's RSS and CPU."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rich.console import Console

from rillet.bench.cpu.clients import Generate, StreamResult, generator_for
from rillet.bench.cpu.systems import Server
from rillet.bench.cpu.workloads import PROMPTS, distinct, level_queue
from rillet.bench.procs import RssSampler, cpu_seconds
from rillet.bench.stats import median, percentile


@dataclass
class LevelResult:
    """One system at one concurrency level in one sweep."""

    system: str
    sweep: int
    concurrency: int
    requests: int
    tokens: int
    short_streams: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    peak_rss_mb: float
    server_cpu_s: float
    client_cpu_s: float
    finishes: dict[str, int] = field(default_factory=dict)


async def run_level(
    generate: Generate, server: Server, index: int, sweep: int, opts: argparse.Namespace
) -> LevelResult:
    """A closed loop: the `index`-th level's workers take its requests in order until none is left."""
    level = opts.levels[index]
    queue = level_queue(opts, index, sweep)
    results: list[StreamResult] = []

    async def worker() -> None:
        while queue:
            results.append(await generate(queue.pop(0), batch=opts.priority == "batch"))

    cpu_before = cpu_seconds(server.pid)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    with RssSampler(server.pid) as rss:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(level))), opts.level_timeout)
        wall = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)
    ttfts = [r.ttft_s for r in results]
    gaps = [g for r in results for g in r.gaps_s]
    tokens = sum(r.tokens for r in results)
    finishes: dict[str, int] = {}
    for r in results:
        finishes[r.finish] = finishes.get(r.finish, 0) + 1
    return LevelResult(
        system=server.name,
        sweep=sweep,
        concurrency=level,
        requests=len(results),
        tokens=tokens,
        short_streams=sum(r.tokens < opts.max_tokens for r in results),
        wall_s=wall,
        tokens_per_s=tokens / wall,
        ttft_p50_s=median(ttfts),
        ttft_p99_s=percentile(ttfts, 99),
        itl_p50_s=median(gaps),
        itl_p99_s=percentile(gaps, 99),
        peak_rss_mb=rss.peak / 2**20,
        server_cpu_s=cpu_seconds(server.pid) - cpu_before,
        client_cpu_s=client_cpu,
        finishes=finishes,
    )


@contextlib.asynccontextmanager
async def warmed(server: Server, opts: argparse.Namespace) -> AsyncIterator[Generate]:
    """The system's client, after --warmup solo requests and one batch of --slots (never a distinct prompt)."""
    warm = PROMPTS if distinct(opts.workload) else opts.prompts
    async with generator_for(server, opts) as generate:
        for i in range(opts.warmup):  # load pages, JIT-free paths, first-request allocations
            await generate(warm[i % len(warm)])
        await asyncio.gather(*(generate(p) for p in warm[: opts.slots]))
        yield generate


async def measure_system(server: Server, sweep: int, opts: argparse.Namespace, console: Console) -> list[LevelResult]:
    out: list[LevelResult] = []
    async with warmed(server, opts) as generate:
        for index, level in enumerate(opts.levels):
            result = await run_level(generate, server, index, sweep, opts)
            console.print(
                f"  sweep {sweep} {server.name:<16} c={level:<3} {result.tokens_per_s:7.1f} tok/s  "
                f"TTFT p50 {result.ttft_p50_s * 1e3:7.1f} ms p99 {result.ttft_p99_s * 1e3:7.1f} ms  "
                f"ITL p50 {result.itl_p50_s * 1e3:6.1f} ms  RSS {result.peak_rss_mb:6.0f} MB  "
                f"short {result.short_streams}/{result.requests}"
            )
            out.append(result)
    return out
