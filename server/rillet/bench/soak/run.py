"""Soak: `rillet serve` on its real engines under hundreds of concurrent clients for minutes; every stream verified."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from rillet.bench.procs import free_port, revision, wait_healthy
from rillet.bench.results import BIN, RESULTS, ROOT, write_results
from rillet.bench.soak.clients import client
from rillet.bench.soak.context import Soak, connect
from rillet.bench.soak.leaks import fd_kinds, proc_stats, rss_rise, slot_check, tcp_states
from rillet.bench.soak.report import report, samples_a_minute, verdict
from rillet.bench.soak.tally import Tally
from rillet.bench.stats import percentile
from rillet.server.config import LlamaCppConfig, PiperConfig
from rillet.server.engine.llamacpp import resolve_slots
from rillet.v1 import inference_service_pb2, inference_service_pb2_grpc

ABOUT = """\
Starts `rillet serve` with its default, real engines (llamacpp: Gemma 3 270M; piper: the bundled voice) on a
loopback port and runs `--sessions` concurrent clients for `--duration-s`. Each client loops over scenarios:
one-shot Generate and Synthesize, Sessions mixing generations, syntheses, streaming-input syntheses (AppendText,
EndInput) and generate→speak chains (text_from_request_id), client cancels at random points, abrupt disconnects
(the channel closed mid-stream), bad input (undecodable frames, over-long ids, NUL, out-of-range sampling, unknown
names...), and the SDK's own one-shot and chained calls. RESOURCE_EXHAUSTED with a retry hint is expected: the
client waits retry_after and retries.

Every stream is verified on raw frames (rillet.v1 stubs): seq 0..n without a gap, exactly one terminal message and
nothing after it; cancelled requests end FINISH_REASON_CANCELLED (or completed before the cancel landed); every bad
input gets its expected code and reason in-band; UNKNOWN and INTERNAL are never allowed. Afterwards, with every
client gone, leaks are checked from outside: `slots` concurrent generations and syntheses must all be admitted at
once (server-reported queue_duration near 0), and the server's threads and open fds must be back near baseline.
Server RSS is sampled every --sample-every-s; piper returns its onnxruntime memory after each segment
(--piper-release-memory, on by default), so RSS follows demand and a leak shows as growth over the second half
(with onnxruntime's arena kept, RSS climbs in steps to the most ever rendered at once, for most of an hour).
Writes bench/results/soak_<date>.md and .json.
Run: .venv/bin/python bench/soak.py [--duration-s 900] [--sessions 200]
"""


def load(opts: argparse.Namespace, target: str, pid: int, chat: bool) -> dict[str, Any]:
    """The load phase, in a process of its own: when it exits, every client connection is really gone.

    (A closed grpc.aio channel may keep its TCP connection while Python objects of its calls are still alive.)
    """
    return asyncio.run(_load(opts, target, pid, chat))


async def _load(opts: argparse.Namespace, target: str, pid: int, chat: bool) -> dict[str, Any]:
    console = Console(width=None if sys.stdout.isatty() else 160)
    tally = Tally()
    soak = Soak(opts, target, tally, chat=chat)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    soak.deadline = started + opts.duration_s
    channels = [connect(target) for _ in range(opts.channels)]
    clients = [asyncio.create_task(client(soak, i, channels[i % len(channels)])) for i in range(opts.sessions)]

    def sample() -> None:
        stats = proc_stats(pid)
        served = sum(tally.served.values())
        elapsed = time.monotonic() - started
        samples.append({"elapsed_s": elapsed, **asdict(stats), "open_calls": tally.open_calls, "served": served})
        if len(samples) % samples_a_minute(opts):
            return  # a line a minute on the console; every sample in the results
        console.print(
            f"  {elapsed:5.0f}s RSS {stats.rss_mb:6.1f} MB threads {stats.threads} fds {stats.fds} calls open "
            f"{tally.open_calls} served {served} cancelled {sum(tally.cancelled.values())} lost {len(tally.lost)} "
            f"violations {len(tally.violations)}"
        )

    async def sampler() -> None:
        next_sample = started + opts.sample_every_s
        while True:
            await asyncio.sleep(1.0)
            tally.open_calls_samples.append(tally.open_calls)
            if time.monotonic() >= next_sample:
                next_sample += opts.sample_every_s
                sample()

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*clients)
    sampling.cancel()
    sample()
    for channel in channels:
        await channel.close()
    return {
        "elapsed_s": time.monotonic() - started,
        "served": dict(tally.served.most_common()),
        "cancelled": dict(tally.cancelled.most_common()),
        "bad_input": dict(tally.bad_input.most_common()),
        "events": dict(tally.events.most_common()),
        "codes": dict(tally.codes.most_common()),
        "streams_verified": tally.streams_verified,
        "lost": tally.lost,
        "violations": tally.violations,
        "latency": {
            name: {"n": len(v), "p50_s": percentile(v, 50), "p99_s": percentile(v, 99)}
            for name, v in sorted(tally.latency.items())
            if v
        },
        "open_calls": {
            "mean": statistics.fmean(tally.open_calls_samples) if tally.open_calls_samples else 0,
            "max": max(tally.open_calls_samples, default=0),
        },
        "samples": samples,
    }


async def run(opts: argparse.Namespace, target: str, pid: int, console: Console, scratch: Path) -> dict[str, Any]:
    """Warm up and take the baseline, run the load in a child process, then check for leaks with every client gone."""
    async with grpc.aio.insecure_channel(target) as channel:
        listed = await inference_service_pb2_grpc.InferenceServiceStub(channel).ListModels(
            inference_service_pb2.ListModelsRequest()
        )
    text_model = next(
        m for m in listed.models if m.kind == inference_service_pb2.Model.KIND_TEXT_GENERATION and m.is_default
    )
    chat = text_model.supports_chat
    console.print(f"default text model {text_model.name}: chat prompts {'served' if chat else 'are bad input'}")
    console.print("slot check before the soak (also warms every path)...")
    text_before = await slot_check(target, "generate", opts.text_slots, opts.slot_check_tokens)
    speech_before = await slot_check(target, "synthesize", opts.speech_slots, 0)
    await asyncio.sleep(opts.settle_s)
    baseline = proc_stats(pid)
    baseline_fds = fd_kinds(pid)
    console.print(f"baseline: {baseline}; {opts.sessions} clients for {opts.duration_s:.0f}s...")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        result = await asyncio.wrap_future(child.submit(load, opts, target, pid, chat))
    (scratch / "load.json").write_text(json.dumps(result, indent=2))  # kept whatever happens next
    samples = [{"elapsed_s": 0.0, **asdict(baseline), "open_calls": 0, "served": 0}, *result.pop("samples")]
    elapsed = result["elapsed_s"]
    console.print(f"soak done in {elapsed:.0f}s; every client gone (its process exited). Leak check...")
    await asyncio.sleep(opts.settle_s)
    text_after = await slot_check(target, "generate", opts.text_slots, opts.slot_check_tokens)
    speech_after = await slot_check(target, "synthesize", opts.speech_slots, 0)
    retried: dict[str, Any] = {}
    if not (text_after.ok(opts.slot_queue_max_s) and speech_after.ok(opts.slot_queue_max_s)):
        console.print(f"slot check failed: {text_after.problems[:3]} {speech_after.problems[:3]}; again in 30s")
        await asyncio.sleep(30)  # a slow clean-up recovers; a leak does not
        retry_text = await slot_check(target, "generate", opts.text_slots, opts.slot_check_tokens)
        retry_speech = await slot_check(target, "synthesize", opts.speech_slots, 0)
        retried = {"generate": asdict(retry_text), "synthesize": asdict(retry_speech)}
    thread_slack = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor, grown on demand and kept
    after = proc_stats(pid)
    for _ in range(30):  # closed connections leave the server's fd table asynchronously
        if after.threads <= baseline.threads + thread_slack and after.fds <= baseline.fds + opts.fd_slack:
            break
        await asyncio.sleep(1.0)
        after = proc_stats(pid)
    late_growth, late_peak_rise = rss_rise([s for s in samples if s["elapsed_s"] >= elapsed / 2])
    leaks = {
        "slot_check_before": {"generate": asdict(text_before), "synthesize": asdict(speech_before)},
        "slot_check_after": {"generate": asdict(text_after), "synthesize": asdict(speech_after)},
        "slot_check_after_30s_more": retried,
        "slots_ok": text_after.ok(opts.slot_queue_max_s) and speech_after.ok(opts.slot_queue_max_s),
        "baseline": asdict(baseline),
        "after": asdict(after),
        "thread_slack": thread_slack,
        "fd_slack": opts.fd_slack,
        "fd_kinds_baseline": baseline_fds,
        "fd_kinds_after": fd_kinds(pid),
        "tcp_states_after": tcp_states(int(target.rsplit(":", 1)[1])),
        "threads_ok": after.threads <= baseline.threads + thread_slack,
        "fds_ok": after.fds <= baseline.fds + opts.fd_slack,
    }
    rss = {
        "start_mb": baseline.rss_mb,
        "end_mb": samples[-1]["rss_mb"],
        "late_growth_mb": late_growth,
        "late_peak_rise_mb": late_peak_rise,
    }
    return {**result, "rss": {**rss, "samples": samples}, "leaks": leaks}


def serve(opts: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RILLET_HOST": "127.0.0.1",
        "RILLET_LLAMACPP__SLOTS": str(opts.text_slots),
        "RILLET_LLAMACPP__N_THREADS": str(opts.threads),
        "RILLET_PIPER__SLOTS": str(opts.speech_slots),
        "RILLET_PIPER__RELEASE_MEMORY": str(opts.piper_release_memory).lower(),
        "RILLET_LOG_LEVEL": "WARNING",
    }
    if opts.model:
        env["RILLET_LLAMACPP__MODEL_PATH"] = opts.model
    with log.open("wb") as sink:
        return subprocess.Popen([str(BIN / "rillet"), "serve", "--port", str(port)], env=env, stdout=sink, stderr=sink)


def arguments() -> argparse.ArgumentParser:
    """The soak's options."""
    parser = argparse.ArgumentParser(description=ABOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=900.0, help="how long clients start new work")
    parser.add_argument("--sessions", type=int, default=200, help="concurrent clients, each looping over scenarios")
    parser.add_argument(
        "--channels", type=int, default=50, help="connections the clients share (disconnects use their own)"
    )
    parser.add_argument("--min-tokens", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cancel-chance", type=float, default=0.25, help="requests the client cancels")
    parser.add_argument("--bad-chance", type=float, default=0.3, help="sessions that carry bad messages")
    parser.add_argument("--think-s", type=float, default=1.0, help="each client's pause between scenarios, at most")
    parser.add_argument("--hang-s", type=float, default=300.0, help="a scenario silent this long is hung (lost)")
    parser.add_argument("--scenario-timeout-s", type=float, default=1800.0, help="a scenario longer than this is hung")
    parser.add_argument("--text-slots", type=int, default=0, help="llama.cpp slots; 0 sizes them as the server does")
    parser.add_argument("--speech-slots", type=int, default=PiperConfig().slots)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 adapts)")
    parser.add_argument("--request-id-limit", type=int, default=128, help="the server's max_request_id_chars")
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="server RSS, threads and fds")
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause between the last client and the leak check")
    parser.add_argument(
        "--slot-check-tokens", type=int, default=64, help="a leaked slot would queue a request this long generation"
    )
    parser.add_argument("--slot-queue-max-s", type=float, default=1.5, help="queue_duration allowed in the leak check")
    parser.add_argument("--fd-slack", type=int, default=4)
    parser.add_argument(
        "--max-late-growth-mb", type=float, default=32.0, help="RSS rise allowed over the 2nd half (its trend line)"
    )
    parser.add_argument(
        "--piper-release-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the server's piper.release_memory: RSS that follows demand, so the growth check can see leaks",
    )
    parser.add_argument("--max-attempts", type=int, default=8, help="tries of a request refused RESOURCE_EXHAUSTED")
    parser.add_argument("--revision", help="what the server runs, for the report (default: git describe of this tree)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", help="GGUF path (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    opts = arguments().parse_args()
    opts.text_slots = resolve_slots(LlamaCppConfig(slots=opts.text_slots))  # the count the leak check must fill
    console = Console(width=None if sys.stdout.isatty() else 160)
    port = free_port()
    target = f"127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="rillet-soak-")) / "server.log"
    process = serve(opts, port, log)
    exit_status: int | None = None
    try:
        wait_healthy(target, 300)
        result = asyncio.run(run(opts, target, process.pid, console, log.parent))
    finally:
        process.terminate()
        try:
            exit_status = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if " ERROR " in line or line.startswith("Traceback")]
    result["server_log"] = {"path": str(log), "lines": len(lines), "errors": len(errors), "first_errors": errors[:20]}
    result["server_exit"] = exit_status
    failed = verdict(opts, result)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": opts.revision or revision(ROOT),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work: timings are indicative)",
        "engines": "llamacpp (Gemma 3 270M Q4_K_M) + piper (bundled voice), the defaults",
        "duration_s": opts.duration_s,
        "sessions (concurrent clients)": opts.sessions,
        "channels": opts.channels,
        "max_tokens": f"{opts.min_tokens}-{opts.max_tokens}",
        "text slots / speech slots": f"{opts.text_slots} / {opts.speech_slots}",
        "piper release_memory": opts.piper_release_memory,
        "cancel chance": opts.cancel_chance,
        "seed": opts.seed,
        "passed": not failed,
    }
    results = {"meta": meta, "failed": failed, **result}
    write_results("soak", results, report(opts, meta, result, failed), directory=opts.out, echo=False)
    console.print("PASS" if not failed else "FAIL: " + "; ".join(failed))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
