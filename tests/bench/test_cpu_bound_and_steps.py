"""The kernels-alone schedule (cpu_bound) on a recording context, and both reports' tables."""

from __future__ import annotations

import argparse

import numpy as np

from rillet.bench.cpu import bound, steps


class RecordingContext:
    """A llama.cpp context stand-in: records each batch's (sequence, first position, tokens, wants logits)."""

    def __init__(self, vocab: int = 8) -> None:
        self.vocab = vocab
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self._batch: list[tuple[int, int, int, bool]] = []
        self.cleared = 0

    def clear_memory(self) -> None:
        self.cleared += 1

    def clear_batch(self) -> None:
        self._batch = []

    def add(self, tokens: list[int], first_pos: int, seq_id: int, *, output_last: bool) -> int:
        self._batch.append((seq_id, first_pos, len(tokens), output_last))
        return sum(count for _, _, count, _ in self._batch) - 1

    def decode(self) -> int:
        self.batches.append(self._batch)
        return 0

    def logits(self, index: int) -> np.ndarray:
        row = np.zeros(self.vocab, dtype=np.float32)
        row[index % self.vocab] = 1.0
        return row


def test_prompts_are_packed_into_batches_then_every_sequence_decodes_one_row_a_step() -> None:
    context = RecordingContext()
    opts = argparse.Namespace(streams=2, batch=6, max_tokens=3)
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]  # two waves: 2 streams, then 1
    total, prefill = bound.decode_waves(context, prompts, opts)
    assert 0.0 < prefill <= total
    assert context.cleared == 2  # each wave starts from an empty cache
    first, second, *decodes = context.batches
    assert first == [(0, 0, 4, True), (1, 0, 2, False)]  # 6 tokens: all of one prompt, the start of the next
    assert second == [(1, 2, 3, True)]  # the rest of it, its logits on its last row
    assert decodes[:2] == [[(0, 4, 1, True), (1, 5, 1, True)], [(0, 5, 1, True), (1, 6, 1, True)]]
    assert decodes[2] == [(0, 0, 2, True)]  # the second wave's prompt
    assert len(decodes) == 2 + 1 + 2  # max_tokens - 1 decode steps a wave: the first token came from the prefill


def test_the_reports_tabulate_what_was_measured() -> None:
    spread = {"median": 20.3, "p10": 20.2, "p90": 20.4, "min": 20.1, "max": 20.5}
    args = {
        "requests": 16, "prompt_tokens": 512, "max_tokens": 32, "streams": 8, "batch": 2048, "threads": 1,
        "context": 16384, "long_tokens": 3500, "long_context": 4096, "rounds": 3,
    }  # fmt: skip
    text = bound.report({"args": args, "load": 0.5, "summary": {"per-stream tokens/s": spread}})
    assert "| per-stream tokens/s | 20.3 | 20.2-20.4 | 20.1-20.5 |" in text
    results = {
        "args": {**args, "set": []},
        "tokens_per_s": 16.3, "wall_s": 31.5, "process_cpu_s": 31.5, "ttft_p50_s": 2.5, "ttft_p99_s": 12.9,
        "load": 0.7, "steps": {"both": {"steps": 4, "seconds": 2.0, "decode_rows": 20, "prompt_tokens": 512}},
    }  # fmt: skip
    assert "| both | 4 | 2.00 | 100% | 500.0 | 20 | 512 |" in steps.report(results)
