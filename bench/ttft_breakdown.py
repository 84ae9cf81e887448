"""Where idle time to first token goes: client → handler → first message → client, Rillet beside the raw floor.

Sequential one-token Generate calls (floor_compare's idle_ttft load) against bench/floor.py and `rillet serve`
(synthetic TEST engine, unthrottled), alternating blocks. Each server runs with its Generate handler wrapped (nothing
else changed): the wrapper notes when grpc.aio entered the handler and when the handler produced its first message.
The client notes when it started the call and when the first message arrived. All four are CLOCK_MONOTONIC
(time.perf_counter_ns, one clock for every process on a Linux host), so per call:

- to_handler: call started → handler entered (the client's send, gRPC's receive, call set-up, the guards);
- in_handler: handler entered → first message produced (everything the server does for the request);
- to_client: first message produced → received (gRPC's send and the client's receive);
- ttft: their sum.

Run: .venv/bin/python bench/ttft_breakdown.py [--rounds 6] [--calls 400] [--gap-ms 0]
Writes bench/results/ttft_breakdown_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SEGMENTS = ("to_handler", "in_handler", "to_client", "ttft")

Handler = Callable[[Any, Any, Any], AsyncIterator[Any]]


def timed(handler: Handler, marks: list[tuple[int, int]]) -> Handler:
    """`handler` noting (entered, first message produced) per call, in perf_counter_ns."""

    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        entered = time.perf_counter_ns()
        first = True
        async for response in handler(self, request, context):
            if first:
                marks.append((entered, time.perf_counter_ns()))
                first = False
            yield response

    return wrapper


def serve(system: str, marks_file: Path, args: list[str]) -> None:
    """Run a server with its Generate handler timed; the marks are written when it exits (SIGTERM)."""
    marks: list[tuple[int, int]] = []
    atexit.register(lambda: marks_file.write_text(json.dumps(marks), encoding="utf-8"))
    if system == "floor":
        import floor  # bench/ is on sys.path when a script in it runs

        floor.Floor.generate = timed(floor.Floor.generate, marks)  # type: ignore[method-assign,assignment]
        sys.argv = ["floor.py", *args]
        floor.main()
    else:
        from rillet.server.cli import main
        from rillet.server.transport.servicer import InferenceServicer

        InferenceServicer.Generate = timed(InferenceServicer.Generate, marks)  # type: ignore[method-assign,assignment]
        sys.argv = ["rillet", "serve", *args]
        main()


async def calls(target: str, count: int, gap_s: float) -> list[tuple[int, int]]:
    """`count` sequential one-token Generate calls: (started, first message received) each."""
    import grpc

    from rillet.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc

    request = inference_service_pb2.GenerateRequest(
        params=generation_pb2.GenerateParams(text="the river runs", max_tokens=1)
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        out: list[tuple[int, int]] = []
        for _ in range(count):
            started = time.perf_counter_ns()
            first = 0
            async for _response in stub.Generate(request, timeout=120):
                first = first or time.perf_counter_ns()
            out.append((started, first))
            if gap_s:
                await asyncio.sleep(gap_s)
        return out


async def measure(rounds: int, count: int, warmup: int, gap_s: float) -> dict[str, Any]:
    from floor_compare import FLOOR_SERVING, RILLET_SERVING, rillet_env, start_server

    from rillet.server.config import Settings

    scratch = RESULTS / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    marks_files = {s: scratch / f"ttft_marks_{s}_{os.getpid()}.json" for s in ("floor", "rillet")}
    serve_args = {
        "floor": ["--port", "0"],
        "rillet": ["--port", "0", "--text-engine", "synthetic", "--speech-engine", "none"],
    }
    commands = {s: [sys.executable, __file__, "--serve", s, str(marks_files[s]), *serve_args[s]] for s in serve_args}
    patterns = {"floor": FLOOR_SERVING, "rillet": RILLET_SERVING}
    env = rillet_env(0, Settings.model_fields["event_loop"].default.value)  # both on their default loop (uvloop)
    client: dict[str, list[tuple[int, int]]] = {"floor": [], "rillet": []}
    per_round: list[dict[str, Any]] = []
    processes: dict[str, asyncio.subprocess.Process] = {}
    targets: dict[str, str] = {}
    try:
        for system in ("floor", "rillet"):
            processes[system], port = await start_server(commands[system], env, patterns[system])
            targets[system] = f"127.0.0.1:{port}"
            client[system] += await calls(targets[system], warmup, gap_s)
        for r in range(rounds):
            order = ("floor", "rillet") if r % 2 == 0 else ("rillet", "floor")
            row: dict[str, Any] = {"load_before": os.getloadavg()[0]}
            for system in order:
                block = await calls(targets[system], count, gap_s)
                client[system] += block
                row[system] = statistics.median(first - started for started, first in block) / 1e3
            row["ratio"] = row["rillet"] / row["floor"]
            per_round.append(row)
            print(f"round {r + 1}/{rounds}: ttft p50 floor {row['floor']:.0f} µs, Rillet {row['rillet']:.0f} µs, "
                  f"{row['ratio']:.2f}x", flush=True)  # fmt: skip
    finally:
        for process in processes.values():
            process.terminate()
            await process.wait()
    segments: dict[str, dict[str, float]] = {}
    for system, records in client.items():
        marks = json.loads(marks_files[system].read_text(encoding="utf-8"))
        marks_files[system].unlink()
        if len(marks) != len(records):
            raise RuntimeError(f"{system}: {len(marks)} handler marks for {len(records)} calls")
        rows = [
            (entered - started, produced - entered, received - produced, received - started)
            for (started, received), (entered, produced) in list(zip(records, marks, strict=True))[warmup:]
        ]
        segments[system] = {name: statistics.median(r[i] for r in rows) / 1e3 for i, name in enumerate(SEGMENTS)}
    ratios = sorted(row["ratio"] for row in per_round)
    return {
        "tool": "bench/ttft_breakdown.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rounds": rounds,
        "calls_per_round": count,
        "gap_ms": gap_s * 1e3,
        "segments_median_us": segments,
        "ttft_ratio": {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]},
        "per_round": per_round,
    }


def markdown(results: dict[str, Any]) -> str:
    floor, rillet = results["segments_median_us"]["floor"], results["segments_median_us"]["rillet"]
    ratio = results["ttft_ratio"]
    lines = [
        f"# Idle TTFT, where it goes — {results['started']}",
        "",
        f"{results['rounds']} rounds of {results['calls_per_round']} sequential one-token Generate calls per server "
        f"(gap {results['gap_ms']:g} ms), floor and Rillet alternating; {results['machine']['cpus']} CPUs, "
        f"Python {results['machine']['python']}. Medians over all calls, µs. Synthetic TEST engine.",
        "",
        "| segment | floor | Rillet | Rillet minus floor |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | {floor[s]:.0f} | {rillet[s]:.0f} | {rillet[s] - floor[s]:+.0f} |" for s in SEGMENTS]
    lines += [
        "",
        f"TTFT p50 ratio per round: median {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=400, help="calls per server per round")
    parser.add_argument("--warmup", type=int, default=200, help="calls per server before the first round")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between calls (0: back to back)")
    parser.add_argument("--tag", default="", help="appended to the results' file names")
    args = parser.parse_args()
    results = asyncio.run(measure(args.rounds, args.calls, args.warmup, args.gap_ms / 1e3))
    from floor_compare import write_results

    write_results("ttft_breakdown", results, markdown(results), args.tag)


if __name__ == "__main__":
    main()
