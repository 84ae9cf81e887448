"""Where idle time to first token goes: client → handler → first message → client, Rillet beside the raw floor.

Sequential one-token Generate calls (floor_compare's idle_ttft load) against three servers, in alternating blocks:
- floor: bench/floor.py, tokens made in the handler (the reference of floor_compare and issue 10's targets);
- floor+engine: bench/floor.py --engine synthetic, the same raw handler taking its tokens from Rillet's synthetic
  TEST engine (its step loop, unthrottled) and nothing else: what the engine costs, without Rillet's serving path;
- Rillet: `rillet serve` on that engine, its whole serving path (guards, validation, session, admission, outbox).
`--floor-engine hop` runs bench/floor.py --engine hop in the floor+engine slot instead: the floor's handler waiting
one event-loop turn before its tokens, what handing a request to an engine on its own task costs with none of the
engine's own work (results tagged `hop`, so that the README's table keeps the synthetic engine's).
Each server runs with its Generate handler wrapped (nothing else changed): the wrapper notes when grpc.aio entered
the handler and when the handler produced its first message. The client notes when it started the call and when
the first message arrived. All four are CLOCK_MONOTONIC (time.perf_counter_ns, one clock for every process on a
Linux host), so per call:

- to_handler: call started → handler entered (the client's send, gRPC's receive, call set-up, the guards);
- in_handler: handler entered → first message produced (everything the server does for the request);
- to_client: first message produced → received (gRPC's send and the client's receive);
- ttft: their sum.

Also each server's CPU time per call, every thread (/proc/<pid>/task/*/schedstat): all it did for a call, first
message or not, which back to back is on the next call's path too. `--pin` runs the servers on CPU 1 and the client
on CPU 0: no migrations between the two cores, so a round's spread is a few percent instead of tens.

Run: .venv/bin/python bench/ttft_breakdown.py [--rounds 6] [--calls 400] [--gap-ms 0] [--pin] [--floor-engine hop]
Writes bench/results/ttft_breakdown_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from rillet.bench.procs import FLOOR_SERVING, RILLET_SERVING, scheduled_seconds, start_server
from rillet.bench.results import RESULTS, write_results
from rillet.bench.stats import median, percentile, spread

SEGMENTS = ("to_handler", "in_handler", "to_client", "ttft")
SYSTEMS = ("floor", "floor+engine", "rillet")
NAMES = {"floor": "floor", "floor+engine": "floor+engine", "rillet": "Rillet"}
FLOOR_ENGINE = {
    "synthetic": "floor+engine: bench/floor.py's handler over the synthetic TEST engine, none of Rillet's serving "
    "path.",
    "hop": "floor+engine: bench/floor.py --engine hop, the floor's handler waiting one event-loop turn before its "
    "tokens (what handing a request to an engine on its own task costs, with none of the engine's work); Rillet on "
    "the synthetic TEST engine.",
}

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
    if system in ("floor", "floor+engine"):
        from rillet.bench import floor

        floor.Floor.generate = timed(floor.Floor.generate, marks)  # type: ignore[method-assign,assignment]
        floor.Floor.from_engine = timed(floor.Floor.from_engine, marks)  # type: ignore[method-assign,assignment]
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


async def measure(
    rounds: int, count: int, warmup: int, gap_s: float, pin: bool, floor_engine: str = "synthetic"
) -> dict[str, Any]:
    from rillet.bench.floor_compare import rillet_env
    from rillet.server.config import Settings

    scratch = RESULTS / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    marks_files = {s: scratch / f"ttft_marks_{s.replace('+', '_')}_{os.getpid()}.json" for s in SYSTEMS}
    serve_args = {
        "floor": ["--port", "0"],
        "floor+engine": ["--port", "0", "--engine", floor_engine],
        "rillet": ["--port", "0", "--text-engine", "synthetic", "--speech-engine", "none"],
    }
    pinned = ["taskset", "-c", "1"] if pin else []
    commands = {
        s: [
            *pinned,
            sys.executable,
            "-m",
            "rillet.bench.ttft_breakdown",
            "--serve",
            s,
            str(marks_files[s]),
            *serve_args[s],
        ]
        for s in SYSTEMS
    }
    patterns = {"floor": FLOOR_SERVING, "floor+engine": FLOOR_SERVING, "rillet": RILLET_SERVING}
    env = rillet_env(0, Settings.model_fields["event_loop"].default.value)  # all on their default loop (uvloop)
    if pin:
        os.sched_setaffinity(0, {0})
    client: dict[str, list[tuple[int, int]]] = {s: [] for s in SYSTEMS}
    cpu: dict[str, list[float]] = {s: [] for s in SYSTEMS}
    per_round: list[dict[str, Any]] = []
    processes: dict[str, asyncio.subprocess.Process] = {}
    targets: dict[str, str] = {}
    try:
        for system in SYSTEMS:
            processes[system], port = await start_server(commands[system], env, patterns[system])
            targets[system] = f"127.0.0.1:{port}"
            client[system] += await calls(targets[system], warmup, gap_s)
        for r in range(rounds):
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
            row: dict[str, Any] = {"load_before": os.getloadavg()[0]}
            for system in order:
                before = scheduled_seconds(processes[system].pid)
                block = await calls(targets[system], count, gap_s)
                cpu[system].append((scheduled_seconds(processes[system].pid) - before) / count * 1e6)
                client[system] += block
                row[system] = median(first - started for started, first in block) / 1e3
                row[f"{system} cpu_us"] = cpu[system][-1]
            row["ratio"] = row["rillet"] / row["floor"]
            row["engine_ratio"] = row["floor+engine"] / row["floor"]
            per_round.append(row)
            print(f"round {r + 1}/{rounds}: ttft p50 " + ", ".join(f"{NAMES[s]} {row[s]:.0f} µs" for s in SYSTEMS)
                  + f"; Rillet/floor {row['ratio']:.2f}x", flush=True)  # fmt: skip
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
        segments[system] = {name: median(r[i] for r in rows) / 1e3 for i, name in enumerate(SEGMENTS)}
        segments[system]["ttft_p99"] = percentile((r[3] for r in rows), 99) / 1e3
        segments[system]["cpu_per_call"] = median(cpu[system])

    return {
        "tool": "bench/ttft_breakdown.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rounds": rounds,
        "calls_per_round": count,
        "gap_ms": gap_s * 1e3,
        "pinned": pin,
        "floor_engine": floor_engine,
        "segments_median_us": segments,
        "ttft_ratio": spread(row["ratio"] for row in per_round),
        "engine_ttft_ratio": spread(row["engine_ratio"] for row in per_round),
        "per_round": per_round,
    }


def markdown(results: dict[str, Any]) -> str:
    segments = results["segments_median_us"]
    floor = segments["floor"]
    ratio, engine = results["ttft_ratio"], results["engine_ttft_ratio"]
    pinned = "servers pinned to CPU 1, the client to CPU 0" if results.get("pinned") else "not pinned"
    lines = [
        f"# Idle TTFT, where it goes — {results['started']}",
        "",
        f"{results['rounds']} rounds of {results['calls_per_round']} sequential one-token Generate calls per server "
        f"(gap {results['gap_ms']:g} ms), the servers alternating; {results['machine']['cpus']} CPUs, {pinned}, "
        f"Python {results['machine']['python']}. Medians over all calls, µs (CPU: median of the rounds). "
        + FLOOR_ENGINE[results.get("floor_engine", "synthetic")],
        "",
        "| segment | "
        + " | ".join(NAMES[s] for s in SYSTEMS)
        + " | floor+engine minus floor | Rillet minus floor+engine |",
        "|---|" + "---|" * (len(SYSTEMS) + 2),
    ]
    for name in (*SEGMENTS, "ttft_p99", "cpu_per_call"):
        row = [segments[s][name] for s in SYSTEMS]
        label = {"ttft_p99": "ttft p99", "cpu_per_call": "server CPU per call"}.get(name, name)
        lines.append(
            f"| {label} | "
            + " | ".join(f"{v:.0f}" for v in row)
            + f" | {row[1] - floor[name]:+.0f} | {row[2] - row[1]:+.0f} |"
        )
    lines += [
        "",
        f"TTFT p50 ratio per round: Rillet / floor median {ratio['median']:.2f}x "
        f"({ratio['min']:.2f}-{ratio['max']:.2f}x); floor+engine / floor {engine['median']:.2f}x "
        f"({engine['min']:.2f}-{engine['max']:.2f}x).",
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
    parser.add_argument("--pin", action="store_true", help="servers on CPU 1, the client on CPU 0 (needs 2 CPUs)")
    parser.add_argument(
        "--floor-engine",
        choices=("synthetic", "hop"),
        default="synthetic",
        help="floor+engine's engine: the synthetic one, or one event-loop turn and no engine work (tagged hop)",
    )
    parser.add_argument("--tag", default="", help="appended to the results' file names")
    args = parser.parse_args()
    results = asyncio.run(measure(args.rounds, args.calls, args.warmup, args.gap_ms / 1e3, args.pin, args.floor_engine))
    tag = "-".join(t for t in (args.tag, "hop" if args.floor_engine == "hop" else "") if t)
    write_results("ttft_breakdown", results, markdown(results), tag)


if __name__ == "__main__":
    main()
