"""The contract's fixtures: one started engine per case and test module, and the helpers that drive it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
import pytest_asyncio

from rillet.server.engine.base import SpeechEngine, SpeechEvent, TextEngine, TextEvent
from rillet.server.types import (
    AudioChunk,
    EngineFinished,
    GenerationRequest,
    Prompt,
    SamplingParams,
    SynthesisRequest,
    TokenDelta,
)
from tests.contract.engines import SpeechCase, TextCase, speech_cases, text_cases

GREEDY = SamplingParams(temperature=0.0)
Output = TypeVar("Output", TokenDelta, AudioChunk)
_ids = itertools.count()


@dataclass
class TextRun:
    """One text stream, checked as it is read: outputs, then exactly one EngineFinished last."""

    deltas: list[TokenDelta] = field(default_factory=list)
    finished: EngineFinished | None = None

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def ids(self) -> list[int]:
        return [t for d in self.deltas for t in d.token_ids]


@dataclass
class SpeechRun:
    """One speech stream, checked as it is read: chunks, then exactly one EngineFinished last."""

    chunks: list[AudioChunk] = field(default_factory=list)
    finished: EngineFinished | None = None


async def _read(
    stream: AsyncIterator[TextEvent] | AsyncIterator[SpeechEvent], kind: type[Output]
) -> tuple[list[Output], EngineFinished]:
    """The outputs of `stream`, each a `kind`, and the one EngineFinished that must come last."""
    outputs: list[Output] = []
    finished: EngineFinished | None = None
    async for event in stream:
        assert finished is None, "nothing may follow EngineFinished"
        if isinstance(event, EngineFinished):
            finished = event
        else:
            assert isinstance(event, kind), f"a {kind.__name__} stream yielded {event!r}"
            outputs.append(event)
    assert finished is not None, "a stream must end with exactly one EngineFinished"
    return outputs, finished


async def read_text(stream: AsyncIterator[TextEvent]) -> TextRun:
    return TextRun(*await _read(stream, TokenDelta))


async def read_speech(stream: AsyncIterator[SpeechEvent]) -> SpeechRun:
    return SpeechRun(*await _read(stream, AudioChunk))


@dataclass
class Text:
    """A started text engine under contract, with its case."""

    case: TextCase
    engine: TextEngine

    def request(
        self,
        prompt: Prompt | None = None,
        max_tokens: int = 8,
        sampling: SamplingParams = GREEDY,
        *,
        stop: tuple[str, ...] = (),
        top_logprobs: int | None = None,
    ) -> GenerationRequest:
        return GenerationRequest(
            f"contract-{next(_ids)}",
            self.engine.models[0].name,
            self.case.prompt if prompt is None else prompt,
            max_tokens,
            sampling,
            stop,
            top_logprobs,
        )

    async def run(self, request: GenerationRequest) -> TextRun:
        return await read_text(self.engine.stream(request))


@dataclass
class Speech:
    """A started speech engine under contract, with its case."""

    case: SpeechCase
    engine: SpeechEngine

    @property
    def rate(self) -> int:
        return self.engine.models[0].sample_rate_hertz

    def request(self, text: AsyncIterator[str], max_chunk_samples: int = 1024) -> SynthesisRequest:
        return SynthesisRequest(f"contract-{next(_ids)}", self.engine.models[0].name, text, max_chunk_samples)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=text_cases())
async def text(request: pytest.FixtureRequest) -> AsyncIterator[Text]:
    """Each text engine, started once per test module (loading a real model takes seconds)."""
    case: TextCase = request.param
    async with case.open() as engine:
        yield Text(case, engine)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=speech_cases())
async def speech(request: pytest.FixtureRequest) -> AsyncIterator[Speech]:
    """Each speech engine, started once per test module."""
    case: SpeechCase = request.param
    async with case.open() as engine:
        yield Speech(case, engine)
