"""The mixed load: chat streams decoding alone, then again while long distinct prompts arrive, per system and sweep."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console

from rillet.bench.cpu.clients import Generate, StreamResult
from rillet.bench.cpu.measure import warmed
from rillet.bench.cpu.systems import Server
from rillet.bench.cpu.workloads import PROMPTS
from rillet.bench.stats import median, percentile


@dataclass
class MixedResult:
    """One system in one sweep of the mixed load.

    `chat_itl_*_alone_s`: the chat streams' inter-token gaps on their own; `chat_itl_*_s`: those that ended while
    the long requests were in flight (from their sending until the last one's end; `chat_gaps` of them); the long
    requests' TTFT from their sending, and `long_done_s` until the last of them ended.
    """

    system: str
    sweep: int
    chat_itl_p50_alone_s: float
    chat_itl_p99_alone_s: float
    chat_itl_p50_s: float
    chat_itl_p99_s: float
    chat_itl_max_s: float
    chat_gaps: int
    long_ttft_p50_s: float
    long_ttft_p99_s: float
    long_done_s: float
    short_streams: int


def gaps_between(results: Sequence[StreamResult], start: float, end: float) -> list[float]:
    """The inter-token gaps of `results` that ended within [start, end] (time.perf_counter)."""
    gaps: list[float] = []
    for result in results:
        at = result.sent_s + result.ttft_s
        for gap in result.gaps_s:
            at += gap
            if start <= at <= end:
                gaps.append(gap)
    return gaps


def mixed_result(
    system: str,
    sweep: int,
    alone: Sequence[StreamResult],
    beside: Sequence[StreamResult],
    longs: Sequence[StreamResult],
    opts: argparse.Namespace,
) -> MixedResult:
    """The figures of one mixed run: the chat requests alone and beside the long ones, and the long requests."""
    sent = min(r.sent_s for r in longs)
    done = max(r.sent_s + r.total_s for r in longs)
    alone_gaps = [g for r in alone for g in r.gaps_s]
    gaps = gaps_between(beside, sent, done)
    ttfts = [r.ttft_s for r in longs]
    chat_short = sum(r.tokens < opts.chat_tokens for r in (*alone, *beside))
    return MixedResult(
        system=system,
        sweep=sweep,
        chat_itl_p50_alone_s=median(alone_gaps),
        chat_itl_p99_alone_s=percentile(alone_gaps, 99),
        chat_itl_p50_s=median(gaps),
        chat_itl_p99_s=percentile(gaps, 99),
        chat_itl_max_s=max(gaps, default=math.nan),
        chat_gaps=len(gaps),
        long_ttft_p50_s=median(ttfts),
        long_ttft_p99_s=percentile(ttfts, 99),
        long_done_s=done - sent,
        short_streams=chat_short + sum(r.tokens < opts.max_tokens for r in longs),
    )


async def chat_streams(
    generate: Generate, opts: argparse.Namespace, decoding: asyncio.Event, until: asyncio.Event | None = None
) -> list[StreamResult]:
    """--chat-streams closed loops of short-prompt requests of --chat-tokens tokens; all but each stream's first.

    Each stream's first request is a lead-in (`decoding` is set when every stream's has ended, so the streams are
    decoding from then on); then each sends --chat-requests more, and with `until`, more still until it is set.
    """
    lead_ins = 0

    async def stream(index: int) -> list[StreamResult]:
        nonlocal lead_ins
        await generate(PROMPTS[index % len(PROMPTS)], opts.chat_tokens)
        lead_ins += 1
        if lead_ins == opts.chat_streams:
            decoding.set()
        measured: list[StreamResult] = []
        turn = 1
        while len(measured) < opts.chat_requests or (until is not None and not until.is_set()):
            measured.append(await generate(PROMPTS[(index * 3 + turn) % len(PROMPTS)], opts.chat_tokens))
            turn += 1
        return measured

    streams = await asyncio.gather(*(stream(i) for i in range(opts.chat_streams)))
    return [r for results in streams for r in results]


async def run_mixed(generate: Generate, system: str, sweep: int, opts: argparse.Namespace) -> MixedResult:
    """The chat streams alone; then again, with the long requests sent at once when every lead-in has ended.

    In the second phase the chat streams go on until the long requests have all ended, so every moment of them has
    chat streams decoding beside it.
    """
    alone = await asyncio.wait_for(chat_streams(generate, opts, asyncio.Event()), opts.level_timeout)
    decoding, longs_done = asyncio.Event(), asyncio.Event()
    chat = asyncio.create_task(chat_streams(generate, opts, decoding, longs_done))
    try:
        deadline = time.monotonic() + opts.level_timeout
        await asyncio.wait_for(decoding.wait(), opts.level_timeout)
        longs = await asyncio.wait_for(
            asyncio.gather(*(generate(p, batch=opts.long_priority == "batch") for p in opts.prompts)),
            deadline - time.monotonic(),
        )
        longs_done.set()
        beside = await asyncio.wait_for(chat, deadline - time.monotonic())
    finally:
        chat.cancel()
    return mixed_result(system, sweep, alone, beside, longs, opts)


async def measure_mixed(server: Server, sweep: int, opts: argparse.Namespace, console: Console) -> MixedResult:
    async with warmed(server, opts) as generate:
        result = await run_mixed(generate, server.name, sweep, opts)
    console.print(
        f"  sweep {sweep} {server.name:<16} chat ITL p99 alone {result.chat_itl_p99_alone_s * 1e3:6.1f} ms, "
        f"beside the long prompts {result.chat_itl_p99_s * 1e3:6.1f} ms (max {result.chat_itl_max_s * 1e3:6.0f}, "
        f"{result.chat_gaps} gaps)  long TTFT p50 {result.long_ttft_p50_s * 1e3:7.0f} ms "
        f"p99 {result.long_ttft_p99_s * 1e3:7.0f} ms  short {result.short_streams}"
    )
    return result
