"""Routing that follows load: weighted_round_robin on ORCA vs round_robin, a drain, and priority under overload.

Three `rillet serve` replicas on loopback (the synthetic TEST engine), one of them slowed (a slower step: each of its
requests takes `--fast-tps / --slow-tps` times as long). The same Poisson stream of sessions (one generation each,
drawn once from `--seed`) is played against them by a client balancing plain round_robin and by one balancing
weighted_round_robin on the replicas' out-of-band ORCA reports, from the Python SDK and from a Go client
(client_sdk/go/internal/fleetload). Fresh replicas for each run, so no run inherits another's load.

- routing: TTFT (client side: start sent to first token) p99 and mean, weighted / round_robin, and sessions lost.
  Targets (issue 23): p99 <= 0.5x, mean <= 0.7x, 0 lost.
- drain: a weighted run in which one fast replica is sent SIGTERM halfway: sessions it refuses (UNAVAILABLE before
  any output, opened again elsewhere) show how long new sessions still reached it. Target: they stop within one report
  interval (1 s, the SDK's ORCA period; the clients' health watch usually takes it out at once).
- priority: one replica; interactive sessions (a Poisson stream) alone, then beside `--batch-workers` closed-loop
  batch sessions that keep every batch slot busy. Targets: interactive TTFT p99 with the batch load <= 1.5x alone;
  batch requests still complete.

The full run (the defaults: 2,000 sessions per client and mode) takes about 10 minutes and needs a quiet machine.
A small check that it works: `python bench/fleet_routing.py --sessions 60 --rate 20 --priority-sessions 40`.
Results: bench/results/fleet_<time>.json and .md. Percentiles are statistics.quantiles' "inclusive" method
(linear between closest ranks), the definition rillet's own stats use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from rillet.client import Client, FinishReason, Priority, TokenDelta, UnavailableError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REPORT_INTERVAL_S = 1.0  # the SDKs' ORCA out-of-band reporting period (client_sdk/rillet/client/_channel.py)


class Replica:
    """One `rillet serve` process on 127.0.0.1, its log drained in the background; killed at exit whatever happens."""

    started: ClassVar[list[asyncio.subprocess.Process]] = []

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.address = f"127.0.0.1:{port}"

    @classmethod
    async def start(cls, **env: str) -> Replica:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
            "--speech-engine", "none", "--drain-grace-s", "60",
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
        )  # fmt: skip
        cls.started.append(process)
        assert process.stderr is not None
        while line := await asyncio.wait_for(process.stderr.readline(), timeout=120):
            if match := re.search(rb"serving .* on [\d.]+:(\d+)", line):
                asyncio.get_running_loop().create_task(_drain_log(process.stderr))
                return cls(process, int(match.group(1)))
        raise RuntimeError("a replica never said where it serves")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), timeout=90)


async def _drain_log(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def replica_env(args: argparse.Namespace, tokens_per_second: float) -> dict[str, str]:
    return {
        "RILLET_SYNTHETIC__SLOTS": str(args.slots),
        "RILLET_SYNTHETIC__TOKENS_PER_SECOND": str(tokens_per_second),
        "RILLET_SYNTHETIC__FIRST_OUTPUT_DELAY_S": "0.02",
        "RILLET_SCHEDULER__MAX_QUEUE": "100000",  # nothing refused: queueing shows as TTFT
        "RILLET_LOAD__MIN_INTERVAL_S": "0.5",
    }


def arrivals(count: int, rate: float, seed: int) -> list[float]:
    """A Poisson stream: `count` arrival times (seconds from the start) at `rate` a second."""
    draw = random.Random(seed)
    at, times = 0.0, []
    for _ in range(count):
        at += draw.expovariate(rate)
        times.append(at)
    return times


# ---- the Python client ------------------------------------------------------------------------------------------


async def python_sessions(
    target: list[str] | str, weighted: bool, times: list[float], max_tokens: int, priority: Priority | None = None
) -> dict[str, Any]:
    """Open one session per arrival and run one generation in it; the same record shape as fleetload's."""
    out: dict[str, Any] = {"ttft_s": [], "ok": 0, "lost": 0, "lost_reasons": {}, "drain_refusals": []}
    round_robin = None if isinstance(target, list) else False
    async with Client.connect(target, round_robin=round_robin, weighted=weighted) as client:

        async def one(index: int) -> None:
            for _ in range(5):
                try:
                    out["ttft_s"].append(await session(client, index, max_tokens, priority))
                    out["ok"] += 1
                    return
                except UnavailableError:  # a draining replica refused the start: open the session again
                    out["drain_refusals"].append(time.monotonic())
                except Exception as error:  # every failure is counted, by what it was
                    reason = f"{type(error).__name__} {getattr(error, 'reason', '')}".strip()
                    out["lost_reasons"][reason] = out["lost_reasons"].get(reason, 0) + 1
                    out["lost"] += 1
                    return
            out["lost"] += 1

        out["started"] = time.monotonic()
        tasks = []
        for index, at in enumerate(times):
            await asyncio.sleep(max(0.0, out["started"] + at - time.monotonic()))
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return out


async def session(client: Client, index: int, max_tokens: int, priority: Priority | None) -> float:
    """One session with one generation: its time to first token. UnavailableError before output: a draining replica."""
    async with client.session() as s:
        sent = time.monotonic()
        stream = await s.generate(f"session {index}: the river runs past the mill", max_tokens=max_tokens,
                                  priority=priority)  # fmt: skip
        first: float | None = None
        tokens = 0
        async for item in stream:
            if isinstance(item, TokenDelta):
                first = first or time.monotonic()
                tokens += len(item.token_ids)
            elif item.reason is not FinishReason.LENGTH or tokens != max_tokens:
                raise RuntimeError(f"finished {item.reason} with {tokens} tokens")
        await s.close()
    assert first is not None
    return first - sent


# ---- the Go client ----------------------------------------------------------------------------------------------


def build_go_client() -> Path:
    out = Path(tempfile.mkdtemp(prefix="rillet-fleetload-")) / "fleetload"
    subprocess.run(["go", "build", "-o", str(out), "./internal/fleetload"], cwd=ROOT / "client_sdk" / "go", check=True)
    return out


async def go_sessions(binary: Path, targets: list[str], weighted: bool, times: list[float], max_tokens: int) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(times, file)
    process = await asyncio.create_subprocess_exec(
        str(binary), "--addresses", ",".join(targets), "--arrivals", file.name,
        "--balancing", "weighted" if weighted else "round_robin", "--max-tokens", str(max_tokens),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"fleetload exited {process.returncode}")
    return json.loads(stdout)


# ---- the phases -------------------------------------------------------------------------------------------------


def summary(run: dict[str, Any]) -> dict[str, Any]:
    ttft = sorted(run["ttft_s"] or [])  # Go's encoding of an empty list is null
    cuts = statistics.quantiles(ttft, n=100, method="inclusive") if len(ttft) > 1 else ttft * 99
    return {
        "sessions": run["ok"] + run["lost"],
        "ok": run["ok"],
        "lost": run["lost"],
        "lost_reasons": run["lost_reasons"],
        "ttft_mean_ms": round(statistics.fmean(ttft) * 1e3, 2) if ttft else None,
        "ttft_p50_ms": round(cuts[49] * 1e3, 2) if ttft else None,
        "ttft_p99_ms": round(cuts[98] * 1e3, 2) if ttft else None,
        "drain_refusals": len(run["drain_refusals"] or []),
    }


async def fleet(args: argparse.Namespace) -> list[Replica]:
    envs = [replica_env(args, args.fast_tps), replica_env(args, args.fast_tps), replica_env(args, args.slow_tps)]
    return list(await asyncio.gather(*(Replica.start(**env) for env in envs)))


async def routing_run(args: argparse.Namespace, client: str, weighted: bool, times: list[float], drain: bool) -> Any:
    replicas = await fleet(args)
    targets = [r.address for r in replicas]
    sigterm_at: float | None = None

    async def drain_halfway() -> None:
        nonlocal sigterm_at
        await asyncio.sleep(times[-1] / 2)
        sigterm_at = time.monotonic()
        replicas[0].process.send_signal(signal.SIGTERM)  # a fast one: it had the most traffic

    try:
        drainer = asyncio.create_task(drain_halfway()) if drain else None
        if client == "python":
            run = await python_sessions(targets, weighted, times, args.max_tokens)
        else:
            run = await go_sessions(args.go_binary, targets, weighted, times, args.max_tokens)
        if drainer is not None:
            await drainer
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
    result = summary(run)
    if drain:
        assert sigterm_at is not None
        refusals = [t - sigterm_at for t in run["drain_refusals"] or []]
        result["drain_last_refusal_after_sigterm_s"] = round(max(refusals), 3) if refusals else 0.0
    return result


async def priority_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Interactive TTFT alone, then beside a saturating closed-loop batch load, on one replica (same arrivals)."""
    times = arrivals(args.priority_sessions, args.priority_rate, args.seed + 1)
    results = {
        "alone": await priority_run(args, times, batch_workers=0),
        "with_batch": await priority_run(args, times, batch_workers=args.batch_workers),
    }
    alone, loaded = results["alone"]["ttft_p99_ms"], results["with_batch"]["ttft_p99_ms"]
    return {**results, "p99_ratio": round(loaded / alone, 3) if alone else None}


async def priority_run(args: argparse.Namespace, times: list[float], batch_workers: int) -> dict[str, Any]:
    """The interactive arrivals on a fresh replica, beside `batch_workers` closed-loop batch sessions.

    The batch load runs in a process of its own (this script, --batch-load), so that its messages do not queue on the
    event loop that times the interactive sessions.
    """
    replica = await Replica.start(**replica_env(args, args.fast_tps))
    load: asyncio.subprocess.Process | None = None
    try:
        if batch_workers:
            load = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--batch-load", replica.address, "--batch-workers", str(batch_workers),
                "--batch-tokens", str(args.batch_tokens), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.sleep(1.0)  # the batch load fills its slots first
        run = await python_sessions(replica.address, False, times, args.max_tokens, Priority.INTERACTIVE)
        completed = 0
        if load is not None:
            load.send_signal(signal.SIGINT)
            stdout, _ = await asyncio.wait_for(load.communicate(), timeout=120)
            completed = int(stdout.decode().split()[-1])
    finally:
        await replica.stop()
    return {**summary(run), "batch_completed": completed}


async def batch_load(address: str, workers: int, tokens: int) -> None:
    """Closed-loop batch sessions until SIGINT; prints how many completed."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    completed = 0

    async def worker(client: Client, index: int) -> None:
        nonlocal completed
        while not stop.is_set():
            await session(client, 10_000 + index, tokens, Priority.BATCH)
            completed += 1

    async with Client.connect(address) as client:
        await asyncio.gather(*(worker(client, w) for w in range(workers)))
    print(completed, flush=True)


async def main(args: argparse.Namespace) -> None:
    times = arrivals(args.sessions, args.rate, args.seed)
    clients = ["python", "go"] if args.client == "both" else [args.client]
    if "go" in clients:
        args.go_binary = build_go_client()
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "go_binary"}, "routing": {}}
    for client in clients:
        rr = await routing_run(args, client, weighted=False, times=times, drain=False)
        wrr = await routing_run(args, client, weighted=True, times=times, drain=False)
        report["routing"][client] = {
            "round_robin": rr,
            "weighted": wrr,
            "p99_ratio": round(wrr["ttft_p99_ms"] / rr["ttft_p99_ms"], 3),
            "mean_ratio": round(wrr["ttft_mean_ms"] / rr["ttft_mean_ms"], 3),
        }
        print(json.dumps({client: report["routing"][client]}), flush=True)
    report["drain"] = await routing_run(args, clients[0], weighted=True, times=times, drain=True)
    report["drain"]["report_interval_s"] = REPORT_INTERVAL_S
    print(json.dumps({"drain": report["drain"]}), flush=True)
    if args.priority_sessions:
        report["priority"] = await priority_phase(args)
        print(json.dumps({"priority": report["priority"]}), flush=True)
    write(report)


def write(report: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"fleet_{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Routing by load (bench/fleet_routing.py)", "", f"`{json.dumps(report['args'])}`", ""]
    lines += ["| client | mode | ok | lost | TTFT mean ms | p50 | p99 |", "|---|---|---|---|---|---|---|"]
    for client, modes in report["routing"].items():
        for mode in ("round_robin", "weighted"):
            r = modes[mode]
            lines.append(
                f"| {client} | {mode} | {r['ok']} | {r['lost']} | {r['ttft_mean_ms']} | {r['ttft_p50_ms']} | "
                f"{r['ttft_p99_ms']} |"
            )
        lines.append(f"| {client} | weighted / round_robin | | | {modes['mean_ratio']}x | | {modes['p99_ratio']}x |")
    drain = report["drain"]
    lines += [
        "",
        f"Drain: the last session that reached the draining replica came "
        f"{drain['drain_last_refusal_after_sigterm_s']} s after SIGTERM ({drain['drain_refusals']} refused, opened "
        f"again elsewhere; report interval {drain['report_interval_s']} s); {drain['lost']} lost.",
    ]
    if "priority" in report:
        p = report["priority"]
        lines += [
            "",
            f"Priority: interactive TTFT p99 {p['alone']['ttft_p99_ms']} ms alone, {p['with_batch']['ttft_p99_ms']} ms "
            f"beside the batch load ({p['p99_ratio']}x); batch requests completed meanwhile: "
            f"{p['with_batch']['batch_completed']}.",
        ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per client and mode")
    parser.add_argument("--rate", type=float, default=45.0, help="Poisson arrivals per second")
    parser.add_argument("--client", choices=["python", "go", "both"], default="both")
    parser.add_argument("--slots", type=int, default=16, help="each replica's slots")
    parser.add_argument("--fast-tps", type=float, default=100.0, help="the fast replicas' step rate (tokens/s)")
    parser.add_argument("--slow-tps", type=float, default=25.0, help="the slowed replica's step rate")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per session's generation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--priority-sessions", type=int, default=400, help="interactive sessions; 0 skips the phase")
    parser.add_argument("--priority-rate", type=float, default=10.0)
    parser.add_argument("--batch-workers", type=int, default=48, help="closed-loop batch sessions beside them")
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--batch-load", metavar="ADDRESS", help=argparse.SUPPRESS)  # the priority phase's child
    return parser.parse_args()


async def run(args: argparse.Namespace) -> None:
    try:
        await main(args)
    finally:
        for process in Replica.started:
            if process.returncode is None:
                process.kill()
                await process.wait()


if __name__ == "__main__":
    options = parse()
    if options.batch_load:
        asyncio.run(batch_load(options.batch_load, options.batch_workers, options.batch_tokens))
    else:
        asyncio.run(run(options))
