"""The server's prompt size limits: characters for text and chat, ids for token-id prompts, each its own setting."""

from __future__ import annotations

import pytest

from rillet.server.config import LimitsConfig, SchedulerConfig, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.errors import InvalidArgument
from rillet.server.scheduler import Router
from rillet.server.types import ChatMessage, GenerateSpec, Prompt
from rillet.server.validation import validate_generate

LIMITS = LimitsConfig(max_prompt_chars=10, max_prompt_token_ids=3)


async def validate(prompt: Prompt) -> None:
    router = Router([SyntheticEngine(SyntheticConfig())], SchedulerConfig())
    await router.start()
    try:
        validate_generate("r", GenerateSpec(prompt=prompt, max_tokens=1), LIMITS, router)
    finally:
        await router.aclose()


@pytest.mark.parametrize(
    ("prompt", "field"),
    [
        ("x" * 11, "params.prompt"),
        ((ChatMessage("user", "x" * 7),), "params.chat"),  # 4 + 7 characters
        ((1, 2, 3, 4), "params.token_ids"),
    ],
)
async def test_each_prompt_kind_is_bounded_by_its_own_limit(prompt: Prompt, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await validate(prompt)
    assert (info.value.reason, info.value.field) == ("PROMPT_TOO_LARGE", field)


@pytest.mark.parametrize("prompt", ["x" * 10, (1, 2, 3)])
async def test_a_prompt_at_its_limit_passes_whatever_the_other_limit(prompt: Prompt) -> None:
    await validate(prompt)  # ten characters pass a limit of 3 ids; 3 ids pass a limit of 10 characters
