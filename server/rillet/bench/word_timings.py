"""How accurate piper's word timings are: each word's span against an independent forced aligner's on the same audio.

The reference is PocketSphinx 5 (its wheel carries its own US English acoustic model and dictionary, so it runs
offline): piper's audio, resampled to 16 kHz, is force-aligned to the sentence's words, 10 ms frames. Rillet's
timings are the engine's own (engine/words.py over piper's phoneme alignment), rendered exactly as the engine
renders a segment. Sentences hold only words in PocketSphinx's dictionary (numbers would need its text
normalization); several have the word pairs espeak merges ("in the", "of the", "to the"). Also: what the word
timings cost, as the time to align a segment's words against the time to render it.

Run: .venv/bin/python bench/word_timings.py [--rounds 3]
Writes bench/results/word_timings_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any

import numpy as np
import soxr  # type: ignore[import-untyped]
from pocketsphinx import Decoder  # type: ignore[import-untyped]

from rillet.bench.results import write_results
from rillet.server.config import PiperConfig
from rillet.server.engine.piper import aligned_model, configured_voices, load_voice, phonemes, render
from rillet.server.engine.words import align_words, tokens

SENTENCES = (
    "Good morning, and welcome back to the river station.",
    "In the middle of the night the old mill stood silent.",
    "She walked to the end of the road and looked at the sea.",
    "The quick brown fox jumps over the lazy dog.",
    "We will meet again in the spring, when the fields are green.",
    "Please bring the map, the lamp and a warm coat for the trip.",
    "He said that the train would leave at noon from the north platform.",
    "Most of the people in the village had never seen the ocean.",
    "Light falls on the grey stone and water turns slowly under the bridge.",
    "After the storm, the children ran outside to play in the puddles.",
    "Thank you for calling. How can I help you today?",
    "The answer is simple: turn left at the church and follow the river.",
)
FRAME_S = 0.01  # PocketSphinx's frame


def reference_spans(decoder: Decoder, pcm16k: np.ndarray, words: list[str]) -> list[tuple[float, float]]:
    """PocketSphinx's forced alignment: each word's (start, end) in seconds, in order."""
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(pcm16k.tobytes(), full_utt=True)
    decoder.end_utt()
    segments = [s for s in decoder.seg() if not s.word.startswith("<")]  # <s>, </s>, <sil>: not words
    spans = [(s.start_frame * FRAME_S, (s.end_frame + 1) * FRAME_S) for s in segments]
    if len(spans) != len(words):
        raise RuntimeError(f"the aligner gave {len(spans)} words for {len(words)}")
    return spans


def measure(rounds: int) -> dict[str, Any]:
    files = configured_voices(PiperConfig())[0]
    with aligned_model(files) as model:
        voice = load_voice(files, 1, model=model)
    rate = files.sample_rate_hertz
    decoder = Decoder(samprate=16000, bestpath=False, loglevel="FATAL")
    render(voice, "Warming up.")
    starts: list[float] = []
    ends: list[float] = []
    render_s: list[float] = []
    align_s: list[float] = []
    for _ in range(rounds):
        for sentence in SENTENCES:
            began = time.perf_counter()
            rendering = render(voice, sentence)
            rendered = time.perf_counter()
            timings = align_words(
                sentence, rendering.phones, functools.partial(phonemes, voice), samples=len(rendering.pcm) // 2
            )
            aligned = time.perf_counter()
            render_s.append(rendered - began)
            align_s.append(aligned - rendered)
            pcm = np.frombuffer(rendering.pcm, dtype=np.int16)
            words = ["".join(c for c in t.text.lower() if c.isalpha() or c == "'") for t in tokens(sentence)]
            reference = reference_spans(decoder, soxr.resample(pcm, rate, 16000).astype(np.int16), words)
            for ours, (start, end) in zip(timings, reference, strict=True):
                starts.append(ours.start_sample / rate - start)
                ends.append(ours.end_sample / rate - end)
    both = [abs(e) for e in starts + ends]
    return {
        "words": len(starts),
        "sentences": len(SENTENCES) * rounds,
        "start_error_ms": _summary(starts),
        "end_error_ms": _summary(ends),
        "abs_error_ms": {
            "mean": 1e3 * statistics.fmean(both),
            "median": 1e3 * statistics.median(both),
            "p90": 1e3 * float(np.percentile(both, 90)),
            "within_50ms": sum(e <= 0.05 for e in both) / len(both),
            "within_100ms": sum(e <= 0.1 for e in both) / len(both),
        },
        "render_ms_median": 1e3 * statistics.median(render_s),
        "align_ms_median": 1e3 * statistics.median(align_s),
        "align_share_of_render": sum(align_s) / sum(render_s),
    }


def _summary(errors: list[float]) -> dict[str, float]:
    """Signed errors (ours minus the reference) in ms: their bias and spread."""
    return {
        "mean": 1e3 * statistics.fmean(errors),
        "mean_abs": 1e3 * statistics.fmean(abs(e) for e in errors),
        "median_abs": 1e3 * statistics.median(abs(e) for e in errors),
        "p90_abs": 1e3 * float(np.percentile([abs(e) for e in errors], 90)),
    }


def markdown(results: dict[str, Any]) -> str:
    start, end, both = results["start_error_ms"], results["end_error_ms"], results["abs_error_ms"]
    return "\n".join(
        [
            f"# piper word timings against PocketSphinx forced alignment — {results['started']}",
            "",
            f"{results['words']} words in {results['sentences']} sentences (the voice's own alignment, engine/words.py;"
            " reference: PocketSphinx 5.1.1's en-us model, 10 ms frames, on the same audio at 16 kHz).",
            "",
            "| boundary | mean signed (ours - reference) | mean abs | median abs | p90 abs |",
            "|---|---|---|---|---|",
            f"| word start | {start['mean']:+.0f} ms | {start['mean_abs']:.0f} ms | {start['median_abs']:.0f} ms | "
            f"{start['p90_abs']:.0f} ms |",
            f"| word end | {end['mean']:+.0f} ms | {end['mean_abs']:.0f} ms | {end['median_abs']:.0f} ms | "
            f"{end['p90_abs']:.0f} ms |",
            "",
            f"All boundaries: within 50 ms {100 * both['within_50ms']:.0f}%, within 100 ms "
            f"{100 * both['within_100ms']:.0f}%; mean {both['mean']:.0f} ms, p90 {both['p90']:.0f} ms.",
            "",
            f"Cost: aligning a sentence's words took {results['align_ms_median']:.1f} ms (median) against "
            f"{results['render_ms_median']:.0f} ms to render it: {100 * results['align_share_of_render']:.1f}% of the "
            "rendering time, on one thread.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="renders of each sentence (piper's durations vary)")
    args = parser.parse_args()
    results = {"started": time.strftime("%Y%m%d-%H%M%S"), **measure(args.rounds)}
    write_results("word_timings", results, markdown(results))
