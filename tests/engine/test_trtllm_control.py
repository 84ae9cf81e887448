"""The trtllm engine's control-plane capabilities on the TensorRT-LLM double: tokenizing as generation reads a prompt,
and the KV cache use from TensorRT-LLM's iteration stats in GetLoad and ORCA (absent when the stats are off)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from rillet.client import ChatMessage, Client, InvalidArgumentError
from rillet.server.engine.base import KvCacheReporting, Tokenizing
from rillet.server.engine.trtllm import TrtllmEngine, kvstats
from rillet.server.errors import ConfigurationError, InvalidArgument, Unavailable
from rillet.server.types import FinishReason
from tests.conftest import ServerFactory, eventually
from tests.doubles.trtllm import double, double_config, executor, request, run, running
from tests.integration.test_control import orca_reports, started


@pytest.fixture
def sim() -> Iterator[Any]:
    with double() as simulation:
        yield simulation


async def test_the_tokenizer_rpcs_read_a_prompt_as_generation_does(sim: Any, make_server: ServerFactory) -> None:
    server = await make_server(engines=[TrtllmEngine(double_config(max_seq_len=4096))])
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        [info] = (await client.server_info()).engines
        assert (info.name, info.tokenizer, info.reports_kv_cache) == ("trtllm", True, True)
        for prompt in ("1, 2, 3, ", "naïve café 🌊 " * 330):  # the long one is tokenized off the loop by generation
            count = await client.count_tokens(prompt)
            generated = await client.generate(prompt, max_tokens=4, temperature=0.0).collect()
            assert count.tokens == generated.finished.usage.input_tokens == len(await client.tokenize(prompt))
            assert count.tokens == 1 + math.ceil(len(prompt.encode()) / 3)  # BOS, then pieces of three bytes
            assert count.context_length == 4096
            assert await client.detokenize(generated.token_ids) == generated.text

        chat = [ChatMessage("system", "be brief"), ChatMessage("user", "hi")]
        ids = await client.tokenize(chat)  # through the model's chat template, generation prompt included
        assert await client.detokenize(ids) == "system: be brief\nuser: hi\nassistant: "  # BOS skipped, as streamed
        generated = await client.generate(chat, max_tokens=2, temperature=0.0).collect()
        assert (await client.count_tokens(chat)).tokens == generated.finished.usage.input_tokens == len(ids)

        turns = [ChatMessage("user", "a"), ChatMessage("user", "b")]  # the template refuses two user turns in a row
        with pytest.raises(InvalidArgumentError) as tokenizing:
            await client.tokenize(turns)
        with pytest.raises(InvalidArgumentError) as generating:
            await client.generate(turns, max_tokens=2).collect()
        assert tokenizing.value.reason == generating.value.reason == "CHAT_TEMPLATE_UNSUPPORTED"
        with pytest.raises(InvalidArgumentError) as outside:
            await client.detokenize([1 << 30])
        assert outside.value.reason == "TOKEN_ID_OUT_OF_RANGE"


async def test_a_model_without_a_chat_template_refuses_chat_as_generation_does(
    sim: Any, make_server: ServerFactory
) -> None:
    sim.chat_template = False
    server = await make_server(engines=[TrtllmEngine(double_config())])
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(InvalidArgumentError) as tokenizing:
            await client.count_tokens([ChatMessage("user", "hi")])
        with pytest.raises(InvalidArgumentError) as generating:
            await client.generate([ChatMessage("user", "hi")], max_tokens=2).collect()
        assert tokenizing.value.reason == generating.value.reason == "CHAT_TEMPLATE_MISSING"
        assert len(await client.tokenize("hi")) == 2  # text still tokenizes: BOS and one piece


async def test_the_engine_tokenizes_only_while_it_serves(sim: Any) -> None:
    from tensorrt_llm._double.tokenizer import BOS, VOCAB_SIZE, piece_ids

    engine = TrtllmEngine(double_config())
    assert isinstance(engine, Tokenizing)
    for call in (lambda: engine.tokenize("tiny", "hi"), lambda: engine.detokenize("tiny", [BOS])):
        with pytest.raises(Unavailable) as early:
            call()
        assert early.value.reason == "WARMING_UP"
    await engine.start()
    assert engine.tokenize("tiny", "hi") == [BOS, *piece_ids(b"hi")]
    assert engine.detokenize("tiny", [BOS, *piece_ids(b"hi")]) == "hi"
    with pytest.raises(InvalidArgument) as outside:
        engine.detokenize("tiny", [VOCAB_SIZE])
    assert outside.value.reason == "TOKEN_ID_OUT_OF_RANGE"
    await engine.aclose()
    with pytest.raises(Unavailable) as closed:
        engine.detokenize("tiny", [BOS])
    assert closed.value.reason == "SHUTTING_DOWN"


# -- the KV cache use ------------------------------------------------------------------------------------------------


async def test_getload_and_orca_report_a_kv_cache_use_that_follows_the_load(
    sim: Any, make_server: ServerFactory
) -> None:
    sim.step_seconds, sim.kv_cache_tokens = 0.005, 8192  # 256 blocks of 32 tokens
    engine = TrtllmEngine(double_config(max_batch_size=4, max_seq_len=4096))
    assert isinstance(engine, KvCacheReporting)
    server = await make_server(engines=[engine], load={"min_interval_s": 0.05})
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        assert (await client.load()).engines[0].kv_cache_utilization is not None  # reported from the start

        streams = [await session.generate(f"{n} " + "x" * 900, max_tokens=1000) for n in range(3)]
        outputs = [aiter(stream) for stream in streams]  # kept: an iterator dropped would cancel its stream
        for output in outputs:
            await started(output)
        await eventually(lambda: engine.kv_cache_utilization() >= 30 / 256)  # three prompts of over 300 tokens
        loaded = (await client.load()).engines[0]
        assert loaded.kv_cache_utilization is not None
        assert 30 / 256 <= loaded.kv_cache_utilization < 1
        assert loaded.utilization >= loaded.kv_cache_utilization
        [report] = await orca_reports(server, 1)
        assert report.named_metrics["kv_cache_utilization"] >= 30 / 256
        assert report.named_metrics["trtllm.kv_cache_utilization"] == report.named_metrics["kv_cache_utilization"]

        for stream in streams:
            await stream.aclose()
        await eventually(lambda: executor(engine).in_flight == 0)
        await eventually(lambda: engine.kv_cache_utilization() == 0.0)  # the executor's own last stats say so
        assert (await client.load()).engines[0].kv_cache_utilization == 0.0
        [report] = await orca_reports(server, 1)
        assert report.named_metrics["kv_cache_utilization"] == 0.0


async def test_stats_that_predate_the_last_release_are_not_reported_once_the_executor_idles(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.kv_cache_tokens, sim.iteration_stats_before_release = 1024, True  # the last stats still show blocks held
    monkeypatch.setattr(kvstats, "STATS_WAIT_SECONDS", 0.3)
    async with running() as engine:
        assert isinstance(engine, KvCacheReporting)
        _, finished = await run(engine, request("1, 2, 3, " * 20, max_tokens=40))
        assert finished.reason is FinishReason.LENGTH
        await eventually(lambda: engine.kv_cache_utilization() > 0)  # the stats of the iteration it finished in
        await eventually(lambda: engine.kv_cache_utilization() == 0.0)  # quiet, and nothing of Rillet's in flight


async def test_a_quiet_spell_during_a_request_does_not_stop_the_reading(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT-LLM's stats iteration ends at the first wait that times out and stays ended until the next submission;
    an iteration slower than that wait, with nothing new submitted, must not freeze the reported use."""
    sim.block_size, sim.kv_cache_tokens = 1, 1000  # a block per token: the use grows with every step
    monkeypatch.setattr(kvstats, "STATS_WAIT_SECONDS", 0.1)
    async with running() as engine:
        assert isinstance(engine, KvCacheReporting)
        sim.step_seconds = 0.35  # slower than the reader's wait, and than the proxy's 0.2 s
        stream = engine.stream(request("12345", max_tokens=8))  # BOS and two pieces
        await anext(stream)
        await eventually(lambda: engine.kv_cache_utilization() >= (3 + 4) / 1000)  # four tokens on, nothing submitted
        await stream.aclose()


async def test_the_reader_keeps_tensorrt_llms_stats_queue_short(sim: Any) -> None:
    """Nothing else empties the queue the proxy fills (it has no bound): the reader must, or memory grows."""
    sim.step_seconds = 0.002
    async with running() as engine:
        for _ in range(3):
            await run(engine, request(max_tokens=100))
        assert engine._llm is not None
        assert engine._llm._executor is not None
        stats = engine._llm._executor._iter_stats_result
        assert stats is not None
        queue = stats.aqueue
        assert queue is not None
        await eventually(lambda: not executor(engine)._stats and queue.empty())


async def test_without_iteration_stats_no_kv_cache_use_is_reported_or_made_up(
    sim: Any, make_server: ServerFactory
) -> None:
    engine = TrtllmEngine(double_config(enable_iter_perf_stats=False))
    assert not isinstance(engine, KvCacheReporting)
    assert isinstance(engine, Tokenizing)
    assert engine._kwargs["enable_iter_perf_stats"] is False
    server = await make_server(engines=[engine])
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        await client.generate("1, 2, 3, ", max_tokens=8).collect()
        assert executor(engine).fetch_stats() == []  # TensorRT-LLM recorded none
        [info] = (await client.server_info()).engines
        assert not info.reports_kv_cache
        assert (await client.load()).engines[0].kv_cache_utilization is None
        [report] = await orca_reports(server, 1)
        assert "kv_cache_utilization" not in report.named_metrics


def test_the_stats_setting_is_typed_and_extra_llm_args_may_not_set_it(sim: Any) -> None:
    assert TrtllmEngine(double_config())._kwargs["enable_iter_perf_stats"] is True  # on unless turned off
    with pytest.raises(ConfigurationError, match=r"trtllm\.<field>"):
        TrtllmEngine(double_config(extra_llm_args={"enable_iter_perf_stats": False}))
