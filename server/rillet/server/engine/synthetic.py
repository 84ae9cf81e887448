"""The synthetic TEST engine: deterministic words at a set rate, for tests and overhead benchmarks only."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncGenerator, Sequence
from typing import Literal

from rillet.server.config import SyntheticConfig
from rillet.server.engine.base import TextCapabilities, TextEvent
from rillet.server.engine.text import StopMatcher, check_request
from rillet.server.errors import InvalidArgument
from rillet.server.types import (
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Prompt,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)

VOCABULARY = (
    "the", "river", "runs", "quietly", "past", "a", "mill", "where", "light", "falls", "on", "stone", "and",
    "water", "turns", "slowly", "under", "old", "bridge", "while", "birds", "sing", "of", "morning", "in",
    "green", "fields", "beyond", "hills", "with", "rain", "clouds", "café", "naïve", "über", "日本", "🦩",
)  # fmt: skip
"""The words the engine emits, one per token; the last five are multibyte in UTF-8 (2, 3 and 4 bytes a character)."""


def synthetic_token(seed: int, index: int) -> int:
    """The token id at position `index` of the deterministic stream for `seed`."""
    return (seed + 7 * index) % len(VOCABULARY)


def prompt_seed(prompt: Prompt, seed: int | None = None) -> int:
    """A stable seed from the prompt, so the same prompt always yields the same text."""
    return zlib.crc32(repr(prompt).encode()) + (seed or 0)


def synthetic_text(prompt: Prompt, tokens: int, seed: int | None = None) -> str:
    """The text the engine emits for `prompt` over `tokens` tokens (what tests compare streams against)."""
    start = prompt_seed(prompt, seed)
    return "".join(VOCABULARY[synthetic_token(start, i)] + " " for i in range(tokens))


class SyntheticEngine:
    """Emits words from a fixed vocabulary, one token per step at `tokens_per_second`. Labelled a test engine."""

    def __init__(self, config: SyntheticConfig) -> None:
        self._config = config
        self._active = 0
        self._models = (
            ModelInfo(
                name=config.model_name,
                kind=ModelKind.TEXT_GENERATION,
                engine=self.name,
                description="TEST ENGINE: deterministic synthetic words at a fixed rate; not a language model",
                is_test_engine=True,
                context_length=config.context_length,
            ),
        )

    @property
    def name(self) -> str:
        return "synthetic"

    @property
    def serves(self) -> Literal[ModelKind.TEXT_GENERATION]:
        return ModelKind.TEXT_GENERATION

    @property
    def capabilities(self) -> TextCapabilities:
        return TextCapabilities(reproducible_seed=True)

    @property
    def models(self) -> Sequence[ModelInfo]:
        return self._models

    @property
    def slots(self) -> int:
        return self._config.slots

    @property
    def active(self) -> int:
        return self._active

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def healthy(self) -> bool:
        return True

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        check_request(request)
        prompt_tokens = self._count_prompt(request)
        self._active += 1
        try:
            started = time.perf_counter()
            await asyncio.sleep(self._config.first_output_delay_s)
            prefill = time.perf_counter() - started
            seed = prompt_seed(request.prompt, request.sampling.seed)
            stops = StopMatcher(request.stop)
            interval = 1.0 / self._config.tokens_per_second
            for index in range(request.max_tokens):
                if index:
                    await asyncio.sleep(interval)
                token = synthetic_token(seed, index)
                check = stops.feed(VOCABULARY[token] + " ")
                logprobs = self._logprobs(token, request.top_logprobs)
                if check.matched is not None:
                    yield TokenDelta(check.emit, (token,), logprobs)  # its id counts, even with no text left
                    usage = Usage(input_tokens=prompt_tokens, output_tokens=index + 1)
                    yield EngineFinished(FinishReason.STOP_SEQUENCE, usage, check.matched, prefill)
                    return
                yield TokenDelta(check.emit, (token,), logprobs)
            tail = stops.flush()
            if tail:
                yield TokenDelta(tail)
            usage = Usage(input_tokens=prompt_tokens, output_tokens=request.max_tokens)
            yield EngineFinished(FinishReason.LENGTH, usage, prefill_seconds=prefill)
        finally:
            self._active -= 1

    def _count_prompt(self, request: GenerationRequest) -> int:
        prompt = request.prompt
        if isinstance(prompt, str):
            count = len(prompt.split())
        else:
            count = len(prompt)
            bad = [t for t in prompt if isinstance(t, int) and not 0 <= t < len(VOCABULARY)]
            if bad:
                raise InvalidArgument(
                    f"token id {bad[0]} is outside the vocabulary (0..{len(VOCABULARY) - 1})",
                    field="params.token_ids",
                    reason="TOKEN_ID_OUT_OF_RANGE",
                )
        limit = self._config.context_length
        if count + request.max_tokens > limit:
            raise InvalidArgument(
                f"prompt of {count} tokens plus max_tokens {request.max_tokens} exceeds the context of {limit} tokens",
                field="params.prompt",
                reason="PROMPT_TOO_LONG",
                metadata={"prompt_tokens": str(count), "context_length": str(limit)},
            )
        return count

    @staticmethod
    def _logprobs(token: int, top: int | None) -> tuple[TokenLogprobs, ...]:
        if top is None:
            return ()
        alternatives = tuple(TokenLogprob((token + k) % len(VOCABULARY), -0.5 * (k + 1)) for k in range(top))
        return (TokenLogprobs(TokenLogprob(token, -0.5), alternatives),)
