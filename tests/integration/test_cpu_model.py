"""The default CPU engine (Gemma 3 270M on llama.cpp) behind the real server and SDK, with small token counts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from rillet.client import Client, Finished, FinishReason, InvalidArgumentError, Session, TokenDelta
from rillet.server.app import RilletServer
from rillet.server.config import Settings
from tests.conftest import eventually

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RilletServer]:
    settings = Settings(port=0, text_engine="llamacpp", speech_engine="none", llamacpp={"context_length": 2048})
    server = RilletServer(settings)
    await server.start()
    yield server
    await server.stop(grace_s=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(server: RilletServer) -> AsyncIterator[Client]:
    async with Client.connect(f"127.0.0.1:{server.port}") as c:
        yield c


async def test_lists_the_real_model(client: Client) -> None:
    (model,) = await client.list_models()
    assert (model.name, model.engine, model.is_test_engine, model.is_default) == (
        "gemma-3-270m",
        "llamacpp",
        False,
        True,
    )
    assert model.context_length > 0


async def test_streams_real_tokens_with_usage(client: Client) -> None:
    events = [e async for e in client.generate("The capital of France is", max_tokens=8, temperature=0)]
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert sum(len(d.token_ids) for d in deltas) == finished.usage.output_tokens
    assert finished.usage.input_tokens >= 5
    assert "".join(d.text for d in deltas).strip()
    assert finished.timings.prefill_s is not None


async def test_ten_concurrent_on_eight_slots_all_finish(server: RilletServer, client: Client) -> None:
    async with client.session() as session:
        streams = [
            await session.generate(f"Item {i}: a short note about", max_tokens=6, temperature=0) for i in range(10)
        ]
        results = await asyncio.gather(*(s.collect() for s in streams))
    for result in results:
        assert result.finished.reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert len(result.token_ids) == result.finished.usage.output_tokens
    assert sum(r.finished.reason is FinishReason.LENGTH for r in results) >= 8
    await eventually(lambda: server.router.active() == 0)


async def test_cancel_frees_the_slot_and_spares_the_neighbour(server: RilletServer, client: Client) -> None:
    async with client.session() as session:
        victim = await session.generate("Once upon a time", max_tokens=400)
        neighbour = await session.generate("Water boils at", max_tokens=6, temperature=0)
        iterator = aiter(victim)
        await anext(iterator)
        await session.cancel(victim.request_id)
        last = [e async for e in iterator][-1]
        assert isinstance(last, Finished)
        assert last.reason is FinishReason.CANCELLED
        assert (await neighbour.collect()).finished.usage.output_tokens > 0
    await eventually(lambda: server.router.active() == 0)


async def test_prompt_longer_than_the_context_names_the_limits(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.generate("word " * 3000, max_tokens=8).collect()
    assert caught.value.reason == "PROMPT_TOO_LONG"
    assert "2048" in caught.value.message


@pytest.mark.timeout(300)
async def test_a_cancellation_storm_leaves_slots_and_kv_at_baseline(server: RilletServer, client: Client) -> None:
    """100 real requests cancelled at random points or by disconnect; then one prompt that needs the whole KV cache.

    A leaked KV cell would leave that prompt no room (llama_decode fails), and a leaked slot would queue it.
    """
    rng = random.Random(3)
    target = f"127.0.0.1:{server.port}"
    reasons: list[str] = []

    async def one(session: Session, i: int) -> None:
        stream = await session.generate(f"Story {i}: once upon a time", max_tokens=rng.randint(2, 16))
        cancel_after = rng.choice((0, 1, 3, None))
        if cancel_after == 0:
            await session.cancel(stream.request_id)  # queued or prefilling
        received = 0
        async for event in stream:
            if isinstance(event, Finished):
                reasons.append(event.reason.value)
                return
            received += 1
            if received == cancel_after:
                await session.cancel(stream.request_id)

    async def batch(start: int, vanish: bool) -> None:
        async with Client.connect(target) as own, own.session() as session:
            if not vanish:
                await asyncio.gather(*(one(session, i) for i in range(start, start + 10)))
                return
            streams = [await session.generate(f"Gone {i}", max_tokens=64) for i in range(start, start + 10)]
            await anext(aiter(streams[0]))
        # leaving the blocks cancelled the call and closed the channel mid-stream

    for wave in (0, 50):  # 50 at once: within 8 slots and a 64-request queue
        await asyncio.gather(*(batch(start, vanish=start % 50 == 40) for start in range(wave, wave + 50, 10)))
    assert len(reasons) == 80
    assert "cancelled" in reasons
    await eventually(lambda: server.router.active() == 0 and server.lifecycle.sessions == 0, timeout=30)
    (model,) = await client.list_models()
    prompt = " the" * (model.context_length - 60)  # about context - 60 tokens: room only if nothing leaked
    result = await client.generate(prompt, max_tokens=8, temperature=0).collect()
    assert result.finished.reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert result.finished.usage.input_tokens > model.context_length - 200
    assert result.finished.timings.queue_s < result.finished.timings.total_s / 2
