"""`ghz` (an independent Go load generator) against Rillet's Generate, beside `rillet bench` at the same load.

ghz comes pinned from the Go module proxy (`make tools` puts it in .tools/bin); it loads the contract from the
descriptor set `make protoset` writes (build/rillet.protoset), or from server reflection when that file is absent.
Both clients run 64 concurrent Generate streams of 1000 tokens against one `rillet serve` on the synthetic TEST
engine (4000 steps/s: 256k tokens/s offered), alternating, so the client's own cost shows: ghz reads every message
of each stream (its latency is the whole stream); tokens/s = completed calls x 1000 / wall time.

Run: .venv/bin/python bench/ghz.py [--rounds 2]   Writes bench/results/ghz_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from rillet.bench.loadgen import sweep
from rillet.bench.loadgen.runner import Bound
from rillet.bench.loadgen.workload import Plan
from rillet.bench.procs import RILLET_SERVING, start_server
from rillet.bench.results import ROOT, write_results
from rillet.bench.stats import median
from rillet.client import GenerateOptions

GHZ = ROOT / ".tools" / "bin" / "ghz"
PROTOSET = ROOT / "build" / "rillet.protoset"
CONCURRENCY, TOKENS, CALLS = 64, 1000, 256
MEDIANS = ("calls_per_s", "tokens_per_s", "latency_p50_ms", "latency_p99_ms")
"""The figures of a client's row: the median of its runs' (perf_readme recomputes them from `runs`)."""
ENGINE = {"RILLET_SYNTHETIC__TOKENS_PER_SECOND": "4000", "RILLET_SYNTHETIC__FIRST_OUTPUT_DELAY_S": "0"}


async def start_rillet() -> tuple[asyncio.subprocess.Process, int]:
    command = [sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
               "--speech-engine", "none"]  # fmt: skip
    return await start_server(command, ENGINE, RILLET_SERVING)


async def run_ghz(target: str) -> dict[str, Any]:
    source = ["--protoset", str(PROTOSET)] if PROTOSET.exists() else []
    data = json.dumps({"params": {"text": "The river ran past", "max_tokens": TOKENS}})
    process = await asyncio.create_subprocess_exec(
        str(GHZ), "--insecure", *source, "--call", "rillet.v1.InferenceService.Generate", "-d", data,
        "-c", str(CONCURRENCY), "-n", str(CALLS), "--format", "json", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"ghz failed: {stderr.decode()[-500:]}")
    report = json.loads(stdout)
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    seconds = report["total"] / 1e9
    latency = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"] or []}
    return {
        "client": f"ghz {'(protoset)' if source else '(reflection)'}",
        "concurrency": CONCURRENCY,
        "max_tokens": TOKENS,
        "calls": report["count"],
        "ok": ok,
        "calls_per_s": ok / seconds,
        "tokens_per_s": ok * TOKENS / seconds,
        "latency_p50_ms": latency.get(50, float("nan")),
        "latency_p99_ms": latency.get(99, float("nan")),
        "errors": report.get("errorDistribution") or {},
    }


async def run_bench(target: str) -> dict[str, Any]:
    results = await sweep.run(
        target,
        Plan(generate=GenerateOptions(max_tokens=TOKENS, timeout=120.0)),
        concurrency=[CONCURRENCY],
        bound=Bound(requests=CALLS),
        warmup=0,
    )
    level = results["levels"][0]
    return {
        "client": "rillet bench",
        "concurrency": CONCURRENCY,
        "max_tokens": TOKENS,
        "calls": level["requests"],
        "ok": level["ok"],
        "calls_per_s": level["ok"] / level["elapsed_s"],
        "tokens_per_s": level["tokens_per_s"],
        "latency_p50_ms": level["e2e_ms"]["p50"],
        "latency_p99_ms": level["e2e_ms"]["p99"],
        "errors": level["errors"],
        "lost": level["lost"],
    }


async def run(rounds: int) -> dict[str, Any]:
    process, port = await start_rillet()
    target = f"127.0.0.1:{port}"
    per: dict[str, list[dict[str, Any]]] = {"ghz": [], "rillet bench": []}
    loads = []
    try:
        await run_bench(target)  # warm-up
        for r in range(rounds):
            order = (run_ghz, run_bench) if r % 2 == 0 else (run_bench, run_ghz)
            for client in order:
                loads.append(os.getloadavg()[0])
                row = await client(target)
                per["ghz" if row["client"].startswith("ghz") else "rillet bench"].append(row)
                print(f"round {r + 1}: {row['client']}: {row['tokens_per_s']:,.0f} tokens/s", flush=True)
    finally:
        process.terminate()
        await process.wait()
    rows = []
    for runs in per.values():
        row = dict(runs[0])
        for key in MEDIANS:
            row[key] = median(run[key] for run in runs)
        row["tokens_per_s_values"] = [run["tokens_per_s"] for run in runs]
        rows.append(row)
    return {"tool": "bench/ghz.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
            "load_before_runs": loads, "rounds": rounds, "rows": rows, "runs": per}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not GHZ.exists():
        sys.exit("ghz is not installed: make tools")
    results = asyncio.run(run(args.rounds))
    lines = [f"# ghz and rillet bench against Generate — {results['started']}", "",
             f"{args.rounds} rounds alternating, medians; {results['cpus']} CPUs shared with other work (load average "
             f"before each run: {', '.join(f'{x:.1f}' for x in results['load_before_runs'])}). "
             f"{CONCURRENCY} streams of {TOKENS} tokens, {CALLS} calls, synthetic TEST engine at 4000 steps/s.", "",
             "| client | calls/s | tokens/s (each run) | stream latency p50 / p99 (ms) |",
             "|---|---|---|---|"]  # fmt: skip
    for row in results["rows"]:
        each = ", ".join(f"{t:,.0f}" for t in row["tokens_per_s_values"])
        lines.append(
            f"| {row['client']} | {row['calls_per_s']:.1f} | {row['tokens_per_s']:,.0f} ({each}) | "
            f"{row['latency_p50_ms']:.0f} / {row['latency_p99_ms']:.0f} |"
        )
    write_results("ghz", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
