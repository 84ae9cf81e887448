"""Telemetry overhead: throughput and TTFT with tracing on (100% sampled) versus off, side by side in one run.

Each round starts a fresh `rillet serve` (synthetic TEST engine) and drives 64 concurrent sessions through the SDK
(or, `--client go`, the Go client), each running generation requests back to back for a fixed time. "on" exports
traces and metrics over OTLP/gRPC to a receiver in another process (it answers without parsing, as a remote
collector costs the server nothing more) and serves the Prometheus endpoint, scraped once a second; "off" configures
nothing. Modes alternate round by round so that drift on the shared machine hits both alike; the table reports
medians over rounds.

Two engine paces: `paced` (each stream at the engine default, 200 tokens/s after a 20 ms first-token delay: the
server has CPU to spare, so the cost shows in latency) and `saturated` (the engine unthrottled: the server is CPU
bound, so every microsecond of telemetry shows in throughput). Target: ≤ 5% throughput loss, ≤ 5% TTFT p50 increase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from rillet.bench import streamload
from rillet.bench.procs import served_ports
from rillet.bench.results import write_results
from rillet.bench.stats import median, percentile
from rillet.client import Client, TokenDelta

RECEIVER = """
import asyncio, sys, grpc
async def main():
    server = grpc.aio.server()
    async def export(request, context):
        return b""  # an empty ExportTrace/MetricsServiceResponse
    handler = grpc.unary_unary_rpc_method_handler(export)
    for service in ("opentelemetry.proto.collector.trace.v1.TraceService",
                    "opentelemetry.proto.collector.metrics.v1.MetricsService"):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""

PACES = {"paced": {}, "saturated": {"RILLET_SYNTHETIC__TOKENS_PER_SECOND": "0"}}


@dataclass
class Round:
    """One measured round."""

    pace: str
    mode: str
    tokens_per_s: float
    requests: int
    ttft_p50_ms: float
    ttft_p99_ms: float


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", RECEIVER, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    port = int(await asyncio.wait_for(process.stdout.readline(), timeout=30))
    try:
        yield port
    finally:
        process.terminate()
        await process.wait()


@contextlib.asynccontextmanager
async def server(pace: str, flags: list[str]) -> AsyncIterator[tuple[int, int | None]]:
    env = {**os.environ, **PACES[pace], "RILLET_SYNTHETIC__SLOTS": "64", "RILLET_LIMITS__STALL_TIMEOUT_S": "0"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "none", *flags, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        yield await served_ports(process.stderr, 60)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=60)


async def scrape_every_second(port: int, stop: asyncio.Event) -> None:
    def get() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            response.read()

    while not stop.is_set():
        await asyncio.to_thread(get)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def drive(port: int, sessions: int, seconds: float, max_tokens: int) -> tuple[int, int, list[float]]:
    """Run `sessions` sessions of back-to-back requests for `seconds` (after a 1 s warm-up); tokens, requests, TTFTs."""
    ttfts: list[float] = []
    counted = {"tokens": 0, "requests": 0}
    loop = asyncio.get_running_loop()
    warm_until = loop.time() + 1.0
    end = warm_until + seconds

    async def one(client: Client, index: int) -> None:
        async with client.session() as session:
            while loop.time() < end:
                started = time.perf_counter()
                stream = await session.generate(f"session {index} says", max_tokens=max_tokens)
                first: float | None = None
                tokens = 0
                async for event in stream:
                    if isinstance(event, TokenDelta):
                        if first is None:
                            first = time.perf_counter() - started
                        tokens += len(event.token_ids)
                if loop.time() > warm_until and loop.time() < end and first is not None:
                    ttfts.append(first)
                    counted["tokens"] += tokens
                    counted["requests"] += 1
            await session.close()

    async with Client.connect(f"127.0.0.1:{port}") as client:
        await asyncio.gather(*(one(client, i) for i in range(sessions)))
    return counted["tokens"], counted["requests"], ttfts


async def drive_go(port: int, sessions: int, seconds: float, max_tokens: int) -> tuple[float, int, float, float]:
    """The same load from the Go client (client_sdk/go/internal/streamload, one connection as the SDK's).

    Returns tokens/s, requests, TTFT p50 and p99 in ms.
    """
    run = await streamload.run(
        f"127.0.0.1:{port}", rpc="session", streams=sessions, conns=1, seconds=1.0 + seconds, warmup=1,
        max_tokens=max_tokens,
    )  # fmt: skip
    if run["bad_streams"]:
        raise RuntimeError(f"{run['bad_streams']} bad streams: {run['first_error']}")
    return run["window_tokens"] / seconds, run["requests"], run["ttft_p50_ms"], run["ttft_p99_ms"]


async def measure(pace: str, mode: str, otlp_port: int, args: argparse.Namespace) -> Round:
    flags = ["--otlp-endpoint", f"http://127.0.0.1:{otlp_port}", "--prometheus-port", "0"] if mode == "on" else []
    async with server(pace, flags) as (port, prometheus):
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape_every_second(prometheus, stop)) if prometheus else None
        if args.client == "go":
            tokens_per_s, requests, p50, p99 = await drive_go(port, args.sessions, args.seconds, args.max_tokens)
        else:
            tokens, requests, ttfts = await drive(port, args.sessions, args.seconds, args.max_tokens)
            tokens_per_s, p50, p99 = tokens / args.seconds, percentile(ttfts, 50) * 1000, percentile(ttfts, 99) * 1000
        stop.set()
        if scraper is not None:
            await scraper
    return Round(pace, mode, tokens_per_s, requests, p50, p99)


def change(on: float, off: float) -> str:
    return f"{(on / off - 1) * 100:+.1f}%"


async def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--paces", nargs="+", default=list(PACES), choices=list(PACES))
    parser.add_argument(
        "--client",
        choices=("python", "go"),
        default="python",
        help="the load: the Python SDK (default), or the Go client, whose ~4x less CPU per token leaves the server "
        "its core on 2-core machines (the SDK client there competes with the server and the exporter for CPU)",
    )
    args = parser.parse_args()
    rounds: list[Round] = []
    load_before = os.getloadavg()
    async with receiver() as otlp_port:
        for pace in args.paces:
            for index in range(args.rounds):
                for mode in ("off", "on") if index % 2 == 0 else ("on", "off"):
                    result = await measure(pace, mode, otlp_port, args)
                    rounds.append(result)
                    print(
                        f"{pace:9} {mode:3} {result.tokens_per_s:9.0f} tok/s  {result.requests:6} requests  "
                        f"TTFT p50 {result.ttft_p50_ms:6.2f} ms  p99 {result.ttft_p99_ms:6.2f} ms",
                        flush=True,
                    )
    lines = [
        f"# Telemetry overhead {time.strftime('%Y-%m-%d %H:%M')} ({platform.machine()}, {os.cpu_count()} cores)",
        "",
        f"{args.sessions} concurrent sessions, {args.max_tokens}-token requests back to back, {args.seconds:g} s per "
        f"round, {args.rounds} rounds per mode (alternating), synthetic TEST engine; medians over rounds. "
        f"Client: {'the Go client (streamload)' if args.client == 'go' else 'the Python SDK'}.",
        "on = traces (100% sampled) and metrics over OTLP/gRPC + the Prometheus endpoint scraped every second.",
        f"Machine load average (1, 5, 15 min) before: {load_before[0]:.1f}, {load_before[1]:.1f}, "
        f"{load_before[2]:.1f}; after: {os.getloadavg()[0]:.1f}, {os.getloadavg()[1]:.1f}, {os.getloadavg()[2]:.1f}.",
        "",
        "| pace | mode | tokens/s | TTFT p50 ms | TTFT p99 ms | throughput change | TTFT p50 change |",
        "|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, dict[str, float]] = {}
    for pace in args.paces:
        medians = {
            mode: {
                key: median(getattr(r, key) for r in rounds if r.pace == pace and r.mode == mode)
                for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms")
            }
            for mode in ("off", "on")
        }
        off, on = medians["off"], medians["on"]
        for mode, m in medians.items():
            changes = " | |"
            if mode == "on":
                changes = f"{change(on['tokens_per_s'], off['tokens_per_s'])} | "
                changes += f"{change(on['ttft_p50_ms'], off['ttft_p50_ms'])} |"
            lines.append(
                f"| {pace} | {mode} | {m['tokens_per_s']:.0f} | {m['ttft_p50_ms']:.2f} | {m['ttft_p99_ms']:.2f} | "
                + changes
            )
        summary[pace] = {
            "throughput_change": on["tokens_per_s"] / off["tokens_per_s"] - 1,
            "ttft_p50_change": on["ttft_p50_ms"] / off["ttft_p50_ms"] - 1,
        }
    lines += ["", "Every round (in the order run):", "", "| pace | mode | tokens/s | requests | TTFT p50 ms | p99 ms |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rounds:
        lines.append(
            f"| {r.pace} | {r.mode} | {r.tokens_per_s:.0f} | {r.requests} | {r.ttft_p50_ms:.2f} | {r.ttft_p99_ms:.2f} |"
        )
    results = {"args": vars(args), "summary": summary, "rounds": [asdict(r) for r in rounds]}
    write_results("tracing", results, "\n".join(lines) + "\n")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
