"""The synthetic TEST engine steps like a batched engine: one token to every running request per step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from rillet.server.errors import Unavailable
from rillet.server.types import EngineFinished, GenerationRequest, TokenDelta


def request(prompt: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(request_id=prompt, model="synthetic-test", prompt=prompt, max_tokens=max_tokens)


async def collect(engine: SyntheticEngine, prompt: str, max_tokens: int) -> tuple[str, int, EngineFinished]:
    text, ids, deltas = [], 0, 0
    async with aclosing(engine.stream(request(prompt, max_tokens))) as events:
        async for event in events:
            if isinstance(event, TokenDelta):
                text.append(event.text)
                ids += len(event.token_ids)
                deltas += 1
            else:
                assert ids == event.usage.output_tokens
                return "".join(text), deltas, event
    raise AssertionError("no EngineFinished")


async def drain(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass


async def test_one_step_gives_every_running_request_one_token() -> None:
    engine = SyntheticEngine(SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0, slots=8))
    await engine.start()
    try:
        results = await asyncio.gather(*(collect(engine, f"batch {i}", 10 + i) for i in range(8)))
        for i, (text, deltas, finished) in enumerate(results):
            assert text == synthetic_text(f"batch {i}", 10 + i)
            assert 1 <= deltas <= 10 + i  # coalesced when the consumer is behind, never more than one per token
            assert finished.usage.output_tokens == 10 + i
        assert engine.steps == 17  # all eight joined the first step; the longest needed 17 tokens
        assert engine.active == 0
    finally:
        await engine.aclose()


async def test_a_request_joins_the_running_batch_at_the_next_step() -> None:
    engine = SyntheticEngine(SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0))
    await engine.start()
    try:
        long = engine.stream(request("long", 1000))
        first = await anext(long)
        assert isinstance(first, TokenDelta)
        text, _, finished = await collect(engine, "short", 5)  # steps on beside the long one
        assert text == synthetic_text("short", 5)
        assert finished.usage.output_tokens == 5
        assert engine.active == 1
        await long.aclose()
        assert engine.active == 0
    finally:
        await engine.aclose()


async def test_closing_the_engine_ends_streams_in_flight_unavailable() -> None:
    engine = SyntheticEngine(SyntheticConfig(tokens_per_second=20.0, first_output_delay_s=0.0))
    await engine.start()
    stream = engine.stream(request("cut short", 1000))
    assert isinstance(await anext(stream), TokenDelta)
    await engine.aclose()
    with pytest.raises(Unavailable) as ended:
        await drain(stream)
    assert ended.value.reason == "ENGINE_CLOSED"
    assert not engine.healthy()
    assert engine.active == 0
