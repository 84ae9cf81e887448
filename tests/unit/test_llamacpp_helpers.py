"""The llamacpp engine's pure helpers: logprobs, seeds, coalescing, naming (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rillet.server.config import LlamaCppConfig
from rillet.server.engine.llamacpp import (
    coalesce,
    context_limit,
    guide,
    resolve_model_name,
    sampler_seed,
    token_logprobs,
)
from rillet.server.errors import InvalidArgument, RilletError
from rillet.server.types import EngineFinished, FinishReason, TokenDelta, TokenLogprob, TokenLogprobs, Usage


def test_token_logprobs_are_a_log_softmax_with_sorted_alternatives() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0, -1.0], dtype=np.float32)
    result = token_logprobs(logits, 2, 3)
    log_total = math.log(sum(math.exp(x) for x in logits.tolist()))
    assert result.token.token_id == 2
    assert result.token.logprob == pytest.approx(2.0 - log_total)
    assert [a.token_id for a in result.top] == [1, 3, 2]  # ties ordered by token id
    assert [a.logprob for a in result.top] == pytest.approx([3.0 - log_total, 3.0 - log_total, 2.0 - log_total])
    assert sum(math.exp(float(x) - log_total) for x in logits.tolist()) == pytest.approx(1.0)


def test_token_logprobs_with_zero_alternatives_reports_only_the_token() -> None:
    result = token_logprobs(np.zeros(4, dtype=np.float32), 0, 0)
    assert result.top == ()
    assert result.token.logprob == pytest.approx(math.log(0.25))


def test_token_logprobs_survive_huge_logits() -> None:
    result = token_logprobs(np.array([1000.0, 1000.0], dtype=np.float32), 0, 1)
    assert result.token.logprob == pytest.approx(math.log(0.5))


def test_seeds_are_stable_32_bit_values_never_llama_cpp_random_marker() -> None:
    assert sampler_seed(42) == sampler_seed(42) == 42
    assert sampler_seed(0xFFFFFFFF) == 0
    assert 0 <= sampler_seed(-1) < 0xFFFFFFFF
    assert 0 <= sampler_seed(2**63 + 5) < 0xFFFFFFFF
    assert all(0 <= sampler_seed(None) < 0xFFFFFFFF for _ in range(100))


def test_coalesce_merges_runs_of_deltas_only() -> None:
    lp = TokenLogprobs(TokenLogprob(2, -0.1))
    finished = EngineFinished(FinishReason.LENGTH, Usage(1, 3))
    items: list[TokenDelta | EngineFinished | RilletError] = [
        TokenDelta("a", (1,)),
        TokenDelta("b", (2,), (lp,)),
        TokenDelta("", (3,)),
        finished,
    ]
    assert coalesce(items) == [TokenDelta("ab", (1, 2, 3), (lp,)), finished]
    error = InvalidArgument("x")
    with_error: list[TokenDelta | EngineFinished | RilletError] = [TokenDelta("a"), TokenDelta("b"), error]
    assert coalesce(with_error) == [TokenDelta("ab"), error]
    assert coalesce([]) == []


def test_model_name_follows_the_file_unless_given() -> None:
    assert resolve_model_name(LlamaCppConfig()) == "gemma-3-270m"
    assert resolve_model_name(LlamaCppConfig(model_path="/models/tiny-llama.Q4.gguf")) == "tiny-llama.Q4"
    assert resolve_model_name(LlamaCppConfig(model_path="/m/x.gguf", model_name="custom")) == "custom"


def test_context_limit_per_sequence() -> None:
    assert context_limit(LlamaCppConfig(context_length=4096, slots=8)) == 4096
    assert context_limit(LlamaCppConfig(context_length=4096, slots=8, kv_unified=False)) == 512


@pytest.mark.parametrize("vocabulary", [262_144, 1000])  # a whole number of 32-token words, and a partial last one
@pytest.mark.parametrize("allowed", [3, 120, 900])  # few (the row is filled, a few kept) to nearly all (copyto)
def test_a_mask_keeps_exactly_the_allowed_logits(vocabulary: int, allowed: int) -> None:
    rng = np.random.default_rng(allowed)
    logits = rng.normal(size=vocabulary).astype(np.float32)
    kept = rng.choice(vocabulary, allowed if allowed < 900 else vocabulary - 100, replace=False)
    bits = np.zeros(32 * ((vocabulary + 31) // 32), dtype=np.uint8)
    bits[kept] = 1
    bits[vocabulary:] = 1  # bits past the vocabulary (llguidance may set them) never index the row
    words = np.packbits(bits, bitorder="little").view(np.int32)
    masked = logits.copy()
    guide.apply(masked, words)
    expected = np.full(vocabulary, -np.inf, dtype=np.float32)
    expected[kept] = logits[kept]
    assert np.array_equal(masked, expected)
