"""Tokens/s of `rillet serve --workers N` at 1 and 2 processes, alternating, on the synthetic TEST engine.

Each round starts the group, drives it with `rillet bench`'s load generator (64 streams of 1000 tokens over 8
connections, so the kernel's SO_REUSEPORT spread has connections to spread), and stops it; rounds alternate the
process counts so machine noise falls on both. The engine steps at 4000/s (256k tokens/s offered), so the figure is
what the serving path delivers. On a 2-core machine the client shares the cores with the servers.

Run: .venv/bin/python bench/workers.py [--rounds 3] [--workers 1 2]
Writes bench/results/workers_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from rillet.bench.loadgen import sweep
from rillet.bench.loadgen.runner import Bound
from rillet.bench.loadgen.workload import Plan
from rillet.bench.procs import free_port
from rillet.bench.results import write_results
from rillet.bench.stats import spread
from rillet.client import GenerateOptions

CONNECTIONS = 8
ENGINE = {"RILLET_SYNTHETIC__TOKENS_PER_SECOND": "4000", "RILLET_SYNTHETIC__FIRST_OUTPUT_DELAY_S": "0"}


async def one_round(workers: int) -> dict[str, Any]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", str(port), "--text-engine", "synthetic",
        "--speech-engine", "none", "--workers", str(workers),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **ENGINE},
    )  # fmt: skip
    assert process.stderr is not None
    try:
        serving = 0
        while serving < workers:
            line = await asyncio.wait_for(process.stderr.readline(), timeout=60)
            if not line:
                raise RuntimeError("the server group ended before it served")
            serving += b"serving synthetic-test on" in line
        results = await sweep.run(
            f"127.0.0.1:{port}",
            Plan(generate=GenerateOptions(max_tokens=1000, timeout=120.0)),
            concurrency=[64],
            bound=Bound(requests=256),
            connections=CONNECTIONS,
            warmup=16,
        )
        level: dict[str, Any] = results["levels"][0]
        return level
    finally:
        process.terminate()
        await process.wait()


async def run(rounds: int, counts: list[int]) -> dict[str, Any]:
    per: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    loads: list[float] = []
    for r in range(rounds):
        for n in counts if r % 2 == 0 else list(reversed(counts)):
            loads.append(os.getloadavg()[0])
            level = await one_round(n)
            per[n].append(level)
            print(f"round {r + 1}: {n} worker(s): {level['tokens_per_s']:,.0f} tokens/s, lost {level['lost']}")
    levels = []
    for n, rows in per.items():
        tokens = [row["tokens_per_s"] for row in rows]
        levels.append(
            {
                "workers": n,
                "connections": CONNECTIONS,
                "tokens_per_s": {**spread(tokens), "values": tokens},
                "lost": sum(row["lost"] + row["failed"] for row in rows),
                "rounds": rows,
            }
        )
    return {
        "tool": "bench/workers.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "load_before_rounds": loads,
        "levels": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    results = asyncio.run(run(args.rounds, args.workers))
    lines = [f"# rillet serve --workers: tokens/s — {results['started']}", "",
             f"{args.rounds} rounds alternating; {results['cpus']} CPUs shared with other work, load average before "
             f"each run: {', '.join(f'{x:.1f}' for x in loads_of(results))}. 64 streams x 1000 tokens, "
             f"{CONNECTIONS} connections, synthetic TEST engine at 4000 steps/s.", "",
             "| processes | tokens/s median | min | max | lost |", "|---|---|---|---|---|"]  # fmt: skip
    for level in results["levels"]:
        t = level["tokens_per_s"]
        lines.append(
            f"| {level['workers']} | {t['median']:,.0f} | {t['min']:,.0f} | {t['max']:,.0f} | {level['lost']} |"
        )
    write_results("workers", results, "\n".join(lines) + "\n")


def loads_of(results: dict[str, Any]) -> list[float]:
    return list(results["load_before_rounds"])


if __name__ == "__main__":
    main()
