"""Word timings on the real voice against an independent reference: PocketSphinx's forced alignment of the same audio.

PocketSphinx 5's wheel carries its own US English model, so this runs offline. bench/word_timings.py measures the same
over more sentences and records the figures (mean 32 ms from the reference, 98% of boundaries within 100 ms).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator

import numpy as np
import pytest
import soxr  # type: ignore[import-untyped]
from pocketsphinx import Decoder  # type: ignore[import-untyped]

from rillet.server.config import PiperConfig
from rillet.server.engine.piper import PiperEngine, aligned_model, configured_voices, load_voice, phonemes, render
from rillet.server.engine.words import align_words, tokens
from rillet.server.types import AudioChunk, SynthesisRequest

pytestmark = pytest.mark.voice

SENTENCES = (
    "Good morning, and welcome back to the river station.",
    "Most of the people in the village had never seen the ocean.",
    "Thank you for calling. How can I help you today?",
    "After the storm, the children ran outside to play in the puddles.",
)


def reference(pcm: np.ndarray, rate: int, text: str) -> list[tuple[float, float]]:
    """Each word's (start, end) in seconds by PocketSphinx's forced alignment, in order."""
    decoder = Decoder(samprate=16000, bestpath=False, loglevel="FATAL")
    words = ["".join(c for c in t.text.lower() if c.isalpha() or c == "'") for t in tokens(text)]
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(soxr.resample(pcm, rate, 16000).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    spans = [(s.start_frame / 100, (s.end_frame + 1) / 100) for s in decoder.seg() if not s.word.startswith("<")]
    assert len(spans) == len(words)
    return spans


def test_word_boundaries_are_within_a_phoneme_or_two_of_a_forced_aligners() -> None:
    files = configured_voices(PiperConfig())[0]
    with aligned_model(files) as model:
        voice = load_voice(files, 1, model=model)
    rate = files.sample_rate_hertz
    errors: list[float] = []
    for text in SENTENCES:
        rendering = render(voice, text)
        ours = align_words(text, rendering.phones, functools.partial(phonemes, voice), samples=len(rendering.pcm) // 2)
        assert [w.text for w in ours] == text.split()
        theirs = reference(np.frombuffer(rendering.pcm, dtype=np.int16), rate, text)
        for word, (start, end) in zip(ours, theirs, strict=True):
            errors += [abs(word.start_sample / rate - start), abs(word.end_sample / rate - end)]
    assert np.mean(errors) < 0.06  # measured 0.032 s over 420 words
    assert np.mean(np.array(errors) <= 0.1) > 0.9  # measured 98%


async def pieces(items: tuple[str, ...]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_the_engine_places_words_in_the_whole_text_across_pieces_and_segments() -> None:
    engine = PiperEngine(PiperConfig(slots=1))
    await engine.start()
    try:
        parts = ("  In the year ", "1984, I paid $3.50 for it. ", "Then   we left.")
        text = "".join(parts)
        words = [
            word
            async for event in engine.stream(SynthesisRequest("w", engine.models[0].name, pieces(parts), 1024))
            if isinstance(event, AudioChunk)
            for word in event.words
        ]
    finally:
        await engine.aclose()
    assert [w.text for w in words] == text.split()
    assert all(text[w.start_char : w.end_char] == w.text for w in words)
    spans = [(w.start_sample, w.end_sample) for w in words]
    assert all(a[1] <= b[0] and a[0] < a[1] for a, b in itertools.pairwise(spans))
