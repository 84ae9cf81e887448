"""Rillet against the raw grpc.aio floor (bench/floor.py), side by side and alternating, with the spread of the ratios.

Both servers run as their own processes on this machine; one client (`rillet bench`'s load generator, raw rillet.v1
stubs) drives them in turns: each round runs every scenario on the floor and on Rillet, the order swapped every
round so neither always runs second. Rillet serves the synthetic TEST engine (its step loop unthrottled, or paced as
the floor's step clock is), so what differs is Rillet's serving path: validation, session, scheduler, outbox,
coalescing, conversion. Ratios are Rillet / floor per round; the results give their median and p10-p90 over rounds.

Scenarios (issue 10's targets):
- idle_ttft: one stream at a time, 1 token each: time to the first message (target ≤ 1.1x p50, ≤ 1.3x p99).
- stream64: 64 concurrent streams of 1000 tokens: tokens/s delivered (target ≥ 150k, 0 lost). The floor sends one
  token per message as fast as gRPC takes them; Rillet's engine steps at 4000/s (256k tokens/s offered, more than
  the serving path delivers on these machines) and the serving path coalesces what its client has not yet taken.
- paced512: 512 sessions, 50 tokens/s each (25.6k tokens/s): inter-token gap p99 (target ≤ 1.2x, 0 lost). Driven
  by the Go client (client_sdk/go/internal/streamload, 20 s, the first 3 not counted): `rillet bench` cannot offer
  this load on a 2-core machine without its own CPU setting the gaps.

Run: .venv/bin/python bench/floor_compare.py [--rounds 5] [--scenarios idle_ttft stream64 paced512]
Writes bench/results/floor_<time>.json and .md; bench/perf_readme.py puts them in README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from rillet.bench import streamload
from rillet.bench.loadgen import sweep
from rillet.bench.loadgen.runner import Bound
from rillet.bench.loadgen.workload import Plan, Rpc
from rillet.bench.procs import FLOOR_SERVING, RILLET_SERVING, start_server
from rillet.bench.results import write_results
from rillet.bench.stats import spread
from rillet.client import GenerateOptions
from rillet.server.config import EventLoopKind, Settings


@dataclass(frozen=True)
class Scenario:
    pace: float  # steps per second of both servers; 0 unthrottled
    rillet_pace: float | None = None  # Rillet's engine step rate when it differs from the floor's
    plan: Plan = field(default_factory=Plan)
    concurrency: int = 1
    bound: Bound = field(default_factory=lambda: Bound(requests=100))
    warmup: int = 8
    metrics: dict[str, Callable[[dict[str, Any]], float]] = field(default_factory=dict)  # read from a level summary
    higher_is_better: frozenset[str] = frozenset()
    targets: dict[str, str] | None = None
    go_seconds: float = 0.0  # > 0: the Go client (streamload) drives it for this long instead of `rillet bench`
    go_warmup: float = 3.0  # seconds of the Go run not counted


SCENARIOS = {
    "idle_ttft": Scenario(
        pace=0,
        plan=Plan(generate=GenerateOptions(max_tokens=1, timeout=120.0)),
        concurrency=1,
        bound=Bound(requests=400),
        warmup=50,
        metrics={"ttft_p50_ms": lambda s: s["ttft_ms"]["p50"], "ttft_p99_ms": lambda s: s["ttft_ms"]["p99"]},
        targets={"ttft_p50_ms": "≤ 1.1x", "ttft_p99_ms": "≤ 1.3x"},
    ),
    "stream64": Scenario(
        pace=0,
        rillet_pace=4000,  # 64 x 4000 = 256k tokens/s offered: more than the serving path delivers
        plan=Plan(generate=GenerateOptions(max_tokens=1000, timeout=120.0)),
        concurrency=64,
        bound=Bound(requests=192),
        warmup=8,
        metrics={
            "tokens_per_s": lambda s: s["tokens_per_s"],
            "messages_per_s": lambda s: s["messages_per_s"],
            "lost": lambda s: s["lost"] + s["failed"],
        },
        higher_is_better=frozenset({"tokens_per_s", "messages_per_s"}),
        targets={"tokens_per_s": "≥ 150k tokens/s, 0 lost"},
    ),
    "paced512": Scenario(
        pace=50,
        plan=Plan(rpc=Rpc.SESSION, generate=GenerateOptions(max_tokens=100)),  # no per-request timeout
        concurrency=512,
        bound=Bound(requests=1024),
        warmup=8,
        go_seconds=20.0,  # 512 paced sessions need a lean client: rillet bench's own CPU would set the gaps here
        metrics={
            "itl_p50_ms": lambda s: s["itl_ms"]["p50"],
            "itl_p99_ms": lambda s: s["itl_ms"]["p99"],
            "tokens_per_s": lambda s: s["tokens_per_s"],
            "lost": lambda s: s["lost"] + s["failed"],
        },
        higher_is_better=frozenset({"tokens_per_s"}),
        targets={"itl_p99_ms": "≤ 1.2x, 0 lost"},
    ),
}


def rillet_env(pace: float, loop: str) -> dict[str, str]:
    """`rillet serve`'s environment for a comparison: the synthetic TEST engine at `pace` steps/s, no prefill."""
    return {
        "RILLET_SYNTHETIC__TOKENS_PER_SECOND": str(pace),
        "RILLET_SYNTHETIC__FIRST_OUTPUT_DELAY_S": "0",
        "RILLET_SYNTHETIC__SLOTS": "1024",
        "RILLET_LOG_LEVEL": "INFO",
        "RILLET_EVENT_LOOP": loop,
    }


@contextlib.asynccontextmanager
async def servers(pace: float, rillet_pace: float, loop: str) -> AsyncIterator[dict[str, str]]:
    """A floor at `pace` steps per second and Rillet at `rillet_pace`, both on event loop `loop`; yields targets."""
    floor_cmd = [sys.executable, "-m", "rillet.bench.floor", "--port", "0", "--steps-per-second", str(pace),
                 "--loop", loop]  # fmt: skip
    rillet_cmd = [sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
                  "--speech-engine", "none"]  # fmt: skip
    floor, floor_port = await start_server(floor_cmd, {}, FLOOR_SERVING)
    try:
        rillet, rillet_port = await start_server(rillet_cmd, rillet_env(rillet_pace, loop), RILLET_SERVING)
        try:
            yield {"floor": f"127.0.0.1:{floor_port}", "rillet": f"127.0.0.1:{rillet_port}"}
        finally:
            rillet.terminate()
            await rillet.wait()
    finally:
        floor.terminate()
        await floor.wait()


def rounds_of(values: list[float]) -> dict[str, Any]:
    """A figure over rounds: its spread and every round's value (perf_readme recomputes the spread from these)."""
    return {**spread(values, 4), "values": [round(v, 4) for v in values]}


async def run(rounds: int, names: list[str], loop: str) -> dict[str, Any]:
    results: dict[str, Any] = {
        "tool": "bench/floor_compare.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rounds": rounds,
        "event_loop": loop,  # both servers'
        "scenarios": {},
    }
    paces = {n: (SCENARIOS[n].pace, SCENARIOS[n].rillet_pace) for n in names}
    for pace, rillet_pace in sorted(set(paces.values()), key=str):
        async with servers(pace, pace if rillet_pace is None else rillet_pace, loop) as targets:
            for name in [n for n in names if paces[n] == (pace, rillet_pace)]:
                scenario = SCENARIOS[name]
                per_round: list[dict[str, Any]] = []
                for r in range(rounds):
                    order = ("floor", "rillet") if r % 2 == 0 else ("rillet", "floor")
                    row: dict[str, Any] = {"order": list(order), "load_before": os.getloadavg()[0]}
                    for system in order:
                        if scenario.go_seconds:
                            level = await go_level(targets[system], scenario)
                        else:
                            out = await sweep.run(
                                targets[system],
                                scenario.plan,
                                concurrency=[scenario.concurrency],
                                bound=scenario.bound,
                                warmup=scenario.warmup,
                            )
                            level = out["levels"][0]
                        row[system] = {metric: read(level) for metric, read in scenario.metrics.items()}
                        row[system]["summary"] = level
                    row["ratios"] = {
                        metric: row["rillet"][metric] / row["floor"][metric]
                        for metric in scenario.metrics
                        if metric != "lost" and row["floor"][metric]
                    }
                    row["load_after"] = os.getloadavg()[0]
                    per_round.append(row)
                    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items())
                    print(f"{name} round {r + 1}/{rounds}: {ratios} (load {row['load_before']:.1f})", flush=True)
                results["scenarios"][name] = {
                    "pace_steps_per_s": {"floor": pace, "rillet": pace if rillet_pace is None else rillet_pace},
                    "concurrency": scenario.concurrency,
                    "plan": {"rpc": scenario.plan.rpc.value, "max_tokens": scenario.plan.generate.max_tokens},
                    "bound": {"requests": scenario.bound.requests, "duration_s": scenario.bound.duration_s},
                    "targets": scenario.targets or {},
                    "higher_is_better": sorted(scenario.higher_is_better),
                    "floor": {m: rounds_of([row["floor"][m] for row in per_round]) for m in scenario.metrics},
                    "rillet": {m: rounds_of([row["rillet"][m] for row in per_round]) for m in scenario.metrics},
                    "ratios": {
                        m: rounds_of([row["ratios"][m] for row in per_round if m in row["ratios"]])
                        for m in scenario.metrics
                        if m != "lost"
                    },
                    "rounds": per_round,
                }
    return results


async def go_level(target: str, scenario: Scenario) -> dict[str, Any]:
    """One run of the Go client (rillet.bench.streamload), summarized with the keys a `rillet bench` level has."""
    window = scenario.go_seconds - scenario.go_warmup
    run = await streamload.run(
        target,
        rpc=scenario.plan.rpc.value,
        streams=scenario.concurrency,
        conns=8,
        seconds=scenario.go_seconds,
        warmup=scenario.go_warmup,
        max_tokens=scenario.plan.generate.max_tokens or 0,
    )
    return {
        "client": "go streamload",
        "itl_ms": {"p50": run["gap_p50_ms"], "p99": run["gap_p99_ms"], "max": run["gap_max_ms"]},
        "tokens_per_s": run["window_tokens"] / window,
        "lost": run["bad_streams"],  # every bad stream, failed or lost: the Go client tells them apart only by text
        "failed": 0,
        "first_error": run["first_error"],
        "requests": run["requests"],
        "client_cpu_s": run["cpu_seconds"],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Rillet against the raw grpc.aio floor — {results['started']}",
        "",
        f"{results['rounds']} rounds, floor and Rillet alternating (order swapped each round), one client process; "
        f"{results['machine']['cpus']} CPUs shared with other work (load average per round below). "
        f"Ratio = Rillet / floor per round; median and p10-p90 over rounds. Synthetic TEST engine. Both servers on "
        f"{results.get('event_loop', 'asyncio')}'s event loop.",
        "",
        "| scenario | metric | floor (median) | Rillet (median) | ratio median | ratio p10-p90 | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results["scenarios"].items():
        for metric, ratio in s["ratios"].items():
            lines.append(
                f"| {name} | {metric} | {s['floor'][metric]['median']:,.3f} | {s['rillet'][metric]['median']:,.3f} | "
                f"{ratio['median']:.2f}x | {ratio['p10']:.2f}-{ratio['p90']:.2f}x | {s['targets'].get(metric, '')} |"
            )
        if "lost" in s["rillet"]:
            lines.append(
                f"| {name} | lost + errors (all rounds) | {sum(s['floor']['lost']['values']):.0f} | "
                f"{sum(s['rillet']['lost']['values']):.0f} | | | 0 |"
            )
    lines += ["", "Load average (1 min) before each round:", ""]
    for name, s in results["scenarios"].items():
        loads = ", ".join(f"{row['load_before']:.1f}" for row in s["rounds"])
        lines.append(f"- {name}: {loads}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--tag", default="", help="appended to the results' file names")
    parser.add_argument(
        "--loop",
        choices=[kind.value for kind in EventLoopKind],
        default=Settings.model_fields["event_loop"].default.value,
        help="both servers' event loop (default: Rillet's)",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args.rounds, args.scenarios, args.loop))
    write_results("floor", results, markdown(results), args.tag)


if __name__ == "__main__":
    main()
