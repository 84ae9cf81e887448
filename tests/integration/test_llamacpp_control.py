"""The control plane on the real CPU engine: Tokenize/CountTokens/Detokenize as generation reads, its KV cache use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from rillet.client import ChatMessage, Client, InvalidArgumentError, TokenDelta
from rillet.server.app import RilletServer
from rillet.server.config import LlamaCppConfig, Settings
from rillet.server.engine.base import KvCacheReporting, Tokenizing
from rillet.server.engine.llamacpp import LlamaCppEngine
from tests.conftest import eventually
from tests.integration.test_control import orca_reports

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]


ENGINE = LlamaCppEngine(LlamaCppConfig(context_length=1024, slots=2, chat_template="gemma"))  # the base GGUF has none


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RilletServer]:
    settings = Settings(port=0, speech_engine="none", load={"min_interval_s": 0.05})
    server = RilletServer(settings, [ENGINE])
    await server.start()
    yield server
    await server.stop(grace_s=0)


async def test_counts_and_ids_are_what_generation_reads_and_detokenize_prints_the_stream(server: RilletServer) -> None:
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        info = await client.server_info()
        assert [(e.name, e.tokenizer, e.reports_kv_cache) for e in info.engines] == [("llamacpp", True, True)]
        prompt = "The mill by the river turned all night"
        ids = await client.tokenize(prompt)
        count = await client.count_tokens(prompt)
        result = await client.generate(prompt, max_tokens=6, temperature=0).collect()
        assert count.tokens == len(ids) == result.finished.usage.input_tokens
        assert ids[0] == 2  # Gemma's BOS, as generation adds it
        assert await client.detokenize(ids[1:]) == prompt
        assert await client.detokenize(result.token_ids) == result.text

        chat = (ChatMessage("user", "Name a river."),)
        chat_ids = await client.tokenize(chat)
        chatted = await client.generate(chat, max_tokens=2, temperature=0).collect()
        assert len(chat_ids) == chatted.finished.usage.input_tokens > len(await client.tokenize("Name a river."))


async def test_it_refuses_what_generation_refuses_with_the_same_reasons(server: RilletServer) -> None:
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(InvalidArgumentError) as empty:
            await client.tokenize("")
        assert empty.value.reason == "EMPTY_PROMPT"
        with pytest.raises(InvalidArgumentError) as outside:
            await client.detokenize([262_144])
        assert outside.value.reason == "TOKEN_ID_OUT_OF_RANGE"
        with pytest.raises(InvalidArgumentError) as role:
            await client.tokenize((ChatMessage("<end_of_turn>", "hi"),))
        assert role.value.reason == "CHAT_ROLE_INVALID"


async def test_kv_cache_use_rises_while_a_generation_runs_and_leaves_cached_prefixes_out(server: RilletServer) -> None:
    engine = ENGINE
    assert isinstance(engine, KvCacheReporting)
    assert isinstance(engine, Tokenizing)
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        await eventually(lambda: engine.kv_cache_utilization() == 0.0)
        request = client.generate("A long story about the mill: " * 12, max_tokens=400, temperature=0)
        stream = aiter(request)
        assert isinstance(await anext(stream), TokenDelta)
        await eventually(lambda: engine.kv_cache_utilization() > 60 / 1024)  # its prompt's cells, in a 1,024 cache
        load = await client.load()
        assert load.engines[0].kv_cache_utilization is not None
        assert load.engines[0].kv_cache_utilization > 0
        (report,) = await orca_reports(server, 1)  # what a weighted_round_robin client balances on
        assert report.named_metrics["llamacpp.kv_cache_utilization"] > 0
        assert report.named_metrics["kv_cache_utilization"] == report.named_metrics["llamacpp.kv_cache_utilization"]
        await request.aclose()  # cancelled: its cells stay as a cached prefix, which a router may count as room
        await eventually(lambda: engine.kv_cache_utilization() == 0.0)


async def test_tokenizer_calls_beside_running_generations_agree_with_each_other_and_with_them(
    server: RilletServer,
) -> None:
    """Tokenize runs on worker threads while the engine thread decodes: every answer is the same, and generation's."""
    prompt = "Thread after thread, the loom kept weaving the same cloth"
    chat = (ChatMessage("user", prompt),)
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        requests = [client.generate(f"{prompt} {n}", max_tokens=200, temperature=0) for n in range(2)]
        streams = [aiter(request) for request in requests]
        for stream in streams:
            assert isinstance(await anext(stream), TokenDelta)  # both decoding on the engine thread
        ids, chat_ids = await client.tokenize(prompt), await client.tokenize(chat)
        texts = await asyncio.gather(*(client.detokenize(ids[1:]) for _ in range(8)))
        answers = await asyncio.gather(*(client.tokenize(prompt if n % 2 else chat) for n in range(16)))
        assert ENGINE.active == 2  # still decoding: the calls ran beside the engine thread's steps
        assert set(texts) == {prompt}
        assert answers == [ids if n % 2 else chat_ids for n in range(16)]
        for request in requests:
            await request.aclose()
        result = await client.generate(chat, max_tokens=1, temperature=0).collect()
        assert result.finished.usage.input_tokens == len(chat_ids)
