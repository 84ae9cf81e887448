"""piper's RSS and throughput under load with onnxruntime's arena kept (the default) and with release_memory.

Each run loads the bundled voice in a fresh process (engine.piper.load_voice, one thread per synthesis, as the
engine's shared session) and has `--workers` threads render segments back to back for `--seconds`: texts of random
words, mostly short, sometimes up to the engine's longest segment (max_segment_chars). RSS is sampled every 5 s.
Modes alternate run by run. Then, in one process, the time to render a short and a medium segment alone, both modes
side by side (what a first segment, so TTFA, pays).

Run: .venv/bin/python bench/piper_memory.py [--rounds 3] [--seconds 60] [--workers 2]
Writes bench/results/piper_memory_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

from rillet.bench.results import write_results
from rillet.bench.stats import median
from rillet.server.config import PiperConfig
from rillet.server.engine.piper import configured_voices, load_voice, render

WORDS = (
    "the", "river", "runs", "quietly", "past", "a", "mill", "where", "light", "falls", "on", "stone", "and", "water",
    "turns", "slowly", "under", "old", "bridge", "while", "birds", "sing", "of", "morning", "in", "green", "fields",
)  # fmt: skip
MODES = ("kept", "released")


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def one_run(mode: str, workers: int, seconds: float, seed: int) -> dict[str, Any]:
    """In this process: `workers` threads rendering for `seconds`; RSS samples, segments and characters per second."""
    longest = PiperConfig().max_segment_chars
    voice = load_voice(configured_voices(PiperConfig())[0], 1, release_memory=mode == "released")
    render(voice, "Hi there.")
    stop = time.monotonic() + seconds
    counts = {"segments": 0, "chars": 0}
    lock = threading.Lock()

    def work(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        while time.monotonic() < stop:
            words = min(int(rng.paretovariate(1.2) * 4), 60)
            text = " ".join(rng.choice(WORDS) for _ in range(words))[: longest - 1] + "."
            render(voice, text)
            with lock:
                counts["segments"] += 1
                counts["chars"] += len(text)

    start_rss, started = rss_mb(), time.monotonic()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    samples: list[float] = []
    while any(thread.is_alive() for thread in threads):
        time.sleep(5.0)
        samples.append(round(rss_mb(), 1))
    return {
        "mode": mode,
        "start_rss_mb": round(start_rss, 1),
        "rss_samples_mb": samples,
        "segments": counts["segments"],
        "chars_per_s": counts["chars"] / (time.monotonic() - started),
    }


def lone_segments(repeats: int) -> dict[str, dict[str, float]]:
    """Median ms to render a short and a medium segment alone, each mode, alternating."""
    files = configured_voices(PiperConfig())[0]
    voices = {mode: load_voice(files, 1, release_memory=mode == "released") for mode in MODES}
    texts = {
        "25 chars": "Hello there, how are you?",
        "60 chars": "The river runs quietly past the old mill, where light falls.",
    }
    out: dict[str, dict[str, float]] = {}
    for label, text in texts.items():
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(repeats):
            for mode, voice in voices.items():
                started = time.perf_counter()
                render(voice, text)
                times[mode].append((time.perf_counter() - started) * 1e3)
        out[label] = {mode: median(values) for mode, values in times.items()}
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# piper memory: arena kept vs released — {results['started']}",
        "",
        f"{results['rounds']} rounds of {results['seconds']:g} s per mode, {results['workers']} worker threads, "
        f"segments up to {PiperConfig().max_segment_chars} characters; {results['cpus']} CPUs.",
        "",
        "| mode | chars/s per run | RSS start, MB | RSS every 5 s, MB |",
        "|---|---|---|---|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['mode']} | {run['chars_per_s']:.0f} | {run['start_rss_mb']:.0f} | "
            f"{', '.join(f'{v:.0f}' for v in run['rss_samples_mb'])} |"
        )
    lines += ["", "A segment rendered alone, median ms:", "", "| segment | kept | released |", "|---|---|---|"]
    lines += [f"| {label} | {t['kept']:.1f} | {t['released']:.1f} |" for label, t in results["lone_ms"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=PiperConfig().workers)
    parser.add_argument("--repeats", type=int, default=30, help="renders of each lone segment per mode")
    parser.add_argument("--tag", default="")
    parser.add_argument("--one-run", choices=MODES, help=argparse.SUPPRESS)  # a run, in the child process
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        print(json.dumps(one_run(args.one_run, args.workers, args.seconds, args.seed)))
        return
    runs = []
    for round_index in range(args.rounds):
        for mode in MODES:
            command = [sys.executable, "-m", "rillet.bench.piper_memory", "--workers", str(args.workers),
                       "--seconds", str(args.seconds), "--one-run", mode, "--seed", str(round_index + 1)]  # fmt: skip
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            runs.append(run)
            print(f"{mode}: {run['chars_per_s']:.0f} chars/s, RSS {run['rss_samples_mb']}", flush=True)
    results = {
        "tool": "bench/piper_memory.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "workers": args.workers,
        "runs": runs,
        "lone_ms": lone_segments(args.repeats),
    }
    write_results("piper_memory", results, markdown(results), args.tag)


if __name__ == "__main__":
    main()
