"""PromptPolicy: one reason per broken condition, the limits it names, and nothing refused within them."""

from __future__ import annotations

import pytest

from rillet.server.engine.prompt import PromptPolicy
from rillet.server.errors import InvalidArgument

POLICY = PromptPolicy(vocab_size=100, context_length=64)


def test_ids_inside_the_vocabulary_pass_and_the_first_outside_is_named() -> None:
    POLICY.check_ids([0, 5, 99])
    POLICY.check_ids([])
    for ids, bad in (([1, 100, -1], 100), ([3, -1, 100], -1)):
        with pytest.raises(InvalidArgument) as info:
            POLICY.check_ids(ids)
        assert info.value.reason == "TOKEN_ID_OUT_OF_RANGE"
        assert info.value.field == "params.token_ids"
        assert info.value.message == f"token id {bad} is outside the vocabulary (0..99)"


def test_a_prompt_without_tokens_is_empty() -> None:
    POLICY.check_not_empty(1)
    with pytest.raises(InvalidArgument) as info:
        POLICY.check_not_empty(0)
    assert (info.value.reason, info.value.field) == ("EMPTY_PROMPT", "params.prompt")


def test_the_prompt_and_its_output_must_fit_one_sequence() -> None:
    POLICY.check_length(60, 4)  # exactly the context
    with pytest.raises(InvalidArgument) as info:
        POLICY.check_length(60, 5)
    error = info.value
    assert error.reason == "PROMPT_TOO_LONG"
    assert error.message == "prompt of 60 tokens plus max_tokens 5 exceeds the context of 64 tokens per sequence"
    assert error.metadata == {
        "field": "params.prompt",
        "prompt_tokens": "60",
        "max_tokens": "5",
        "context_length": "64",
    }


def test_a_prompt_taken_in_one_batch_must_fit_that_batch() -> None:
    batched = PromptPolicy(vocab_size=100, context_length=64, max_prompt_tokens=16)
    batched.check_length(16, 40)
    with pytest.raises(InvalidArgument) as info:
        batched.check_length(17, 1)
    assert info.value.reason == "PROMPT_TOO_LONG"
    assert info.value.metadata["max_prompt_tokens"] == "16"
    POLICY.check_length(17, 1)  # without the batch limit, only the context counts
