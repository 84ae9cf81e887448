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


def test_decode_calls_hold_every_prompt_then_time_calls_of_each_row_count_one_row_a_sequence() -> None:
    context = RecordingContext()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    seconds = bound.decode_calls(context, prompts, [1, 3], repeats=2)
    assert set(seconds) == {1, 3}
    assert all(value >= 0.0 for value in seconds.values())
    held, calls = context.batches[:3], context.batches[3:]
    assert held == [[(0, 0, 3, True)], [(1, 0, 2, True)], [(2, 0, 4, True)]]
    assert calls[:2] == [[(0, 3, 1, True)], [(0, 4, 1, True)]]  # each row one position past the last
    assert calls[2] == [(0, 5, 1, True), (1, 2, 1, True), (2, 4, 1, True)]
    assert len(calls) == 4


def test_the_fit_recovers_a_calls_fixed_cost_and_a_rows() -> None:
    fixed, per_row = bound.fixed_and_per_row({1: 0.034, 2: 0.042, 4: 0.058, 8: 0.090})
    assert abs(fixed - 0.026) < 1e-9
    assert abs(per_row - 0.008) < 1e-9
    assert bound.fixed_and_per_row({4: 0.05}) == (0.05, 0.0)


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
    results["calls"] = {
        "prompt": {"steps": 4, "seconds": 1.6, "decode_rows": 0, "prompt_tokens": 512},
        "decode": {"steps": 4, "seconds": 0.4, "decode_rows": 20, "prompt_tokens": 0},
    }
    text = steps.report(results)
    assert "| prompt | 4 | 1.60 | 400.0 | 0 | 512 | - | 3.12 |" in text
    assert "| decode | 4 | 0.40 | 100.0 | 20 | 0 | 20.0 | - |" in text


def test_steps_and_calls_are_tallied_by_kind_in_the_kinds_order() -> None:
    rows = [(5, 0, 0.1), (0, 128, 0.4), (5, 0, 0.1), (2, 30, 0.2)]
    table = steps.tally(rows, steps.CALL_KINDS)
    assert list(table) == ["prompt", "fused", "decode"]
    assert table["decode"] == {"steps": 2, "seconds": 0.2, "decode_rows": 10, "prompt_tokens": 0}
    assert table["fused"]["prompt_tokens"] == 30
    assert table["prompt"]["steps"] == 1
