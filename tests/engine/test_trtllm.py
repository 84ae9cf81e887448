"""The trtllm engine on the TensorRT-LLM test double, at the engine seam and through the real server and SDK.

The engine code under test is exactly the code that runs on a GPU: only `import tensorrt_llm` finds the double.
Tests marked `gpu` run the real TensorRT-LLM where it is installed and a GPU is visible, and skip otherwise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rillet.client import Client, DeadlineExceededError, Finished, TokenDelta
from rillet.server.config import TrtllmConfig, TrtllmSampler
from rillet.server.engine.base import KvCacheReporting
from rillet.server.engine.trtllm import INSTALL_HELP, TrtllmEngine, token_logprobs
from rillet.server.errors import ConfigurationError, DeadlineExceeded, EngineDead, Internal, InvalidArgument
from rillet.server.types import (
    ChatMessage,
    EngineFinished,
    FinishReason,
    SamplingParams,
)
from rillet.server.types import (
    TokenDelta as EngineDelta,
)
from rillet.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc
from tests.conftest import ServerFactory, eventually
from tests.doubles.trtllm import DOUBLES, double, double_config, executor, request, run, running

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Iterator[Any]:
    with double() as simulation:
        yield simulation


# -- the stream ------------------------------------------------------------------------------------------------------


async def test_deltas_are_the_model_output_and_usage_counts_them(sim: Any) -> None:
    async with running() as engine:
        deltas, finished = await run(engine, request("1, 2, 3, ", max_tokens=6))
        assert "".join(d.text for d in deltas) == "1, 2, 3, 1, 2, 3, "  # the double repeats its prompt greedily
        assert finished.reason is FinishReason.LENGTH
        assert finished.usage.output_tokens == 6 == sum(len(d.token_ids) for d in deltas)
        assert finished.usage.input_tokens == 4  # BOS and three pieces of three bytes
        assert finished.prefill_seconds is not None
        assert engine.active == 0
        assert executor(engine).in_flight == 0


async def test_prompt_tokens_served_from_reused_kv_blocks_are_reported(sim: Any) -> None:
    prompt = "1, 2, 3, 4, 5, 6, 7, 8, " * 12
    async with running() as engine:
        _, first = await run(engine, request(prompt, max_tokens=2))
        _, second = await run(engine, request(prompt, max_tokens=2))
    assert first.usage.cached_input_tokens == 0
    assert 0 < second.usage.cached_input_tokens < second.usage.input_tokens


async def test_the_end_token_finishes_with_stop(sim: Any) -> None:
    sim.eos_after = 3
    async with running() as engine:
        deltas, finished = await run(engine, request(max_tokens=50))
        assert finished.reason is FinishReason.STOP
        assert finished.usage.output_tokens == 3 == sum(len(d.token_ids) for d in deltas)


async def test_warm_up_runs_a_request_before_serving(sim: Any) -> None:
    async with running() as engine:
        assert executor(engine).steps > 0  # the warm-up generation went through the executor
        assert engine.active == 0
        assert engine.healthy()
        assert engine.models[0].context_length == 512
        assert engine.models[0].supports_chat


async def test_a_warm_up_that_fails_stops_the_start(sim: Any) -> None:
    sim.request_error_after = 0
    engine = TrtllmEngine(double_config())
    with pytest.raises(EngineDead, match="warm-up"):
        await engine.start()
    assert not engine.healthy()


async def test_a_model_that_cannot_load_stops_the_start(sim: Any) -> None:
    sim.load_error = "no such model: rillet-double/missing"
    engine = TrtllmEngine(double_config())
    with pytest.raises(EngineDead, match="could not load") as error:
        await engine.start()
    assert error.value.reason == "ENGINE_START_FAILED"


# -- cancellation: one path, the stream's finally --------------------------------------------------------------------


async def test_closing_the_stream_aborts_the_request_in_tensorrt_llm(sim: Any) -> None:
    sim.step_seconds = 0.005
    async with running() as engine:
        stream = engine.stream(request(max_tokens=400))
        assert isinstance(await anext(stream), EngineDelta)
        (result,) = engine._in_flight
        await stream.aclose()
        assert result.aborted()
        assert engine.active == 0
        await eventually(lambda: executor(engine).in_flight == 0)  # the slot and KV are free in the executor


async def test_cancel_deadline_and_disconnect_through_the_server_abort_in_the_double(
    sim: Any, make_server: ServerFactory
) -> None:
    sim.step_seconds = 0.005
    engine = TrtllmEngine(double_config(max_batch_size=4))
    server = await make_server(engines=[engine])
    slots = executor(engine)
    address = f"127.0.0.1:{server.port}"
    async with Client.connect(address) as client, client.session() as session:
        victim = await session.generate("cancel me", max_tokens=400)
        neighbour = await session.generate("1, 2, 3, ", max_tokens=4, temperature=0.0)
        iterator = aiter(victim)
        assert isinstance(await anext(iterator), TokenDelta)
        await session.cancel(victim.request_id)
        rest = [event async for event in iterator]
        assert isinstance(rest[-1], Finished)
        assert rest[-1].reason.value == "cancelled"
        assert (await neighbour.collect()).text == "1, 2, 3, 1, "
        await eventually(lambda: slots.in_flight == 0 and engine.active == 0)

        too_slow = await session.generate("deadline", max_tokens=400, timeout=0.2)
        with pytest.raises(DeadlineExceededError):
            await too_slow.collect()
        await eventually(lambda: slots.in_flight == 0 and engine.active == 0)

    channel = grpc.aio.insecure_channel(address)
    call = inference_service_pb2_grpc.InferenceServiceStub(channel).Session()
    for i in range(3):
        params = generation_pb2.GenerateParams(text="gone", max_tokens=400)
        start = inference_service_pb2.StartGenerate(params=params)
        await call.write(inference_service_pb2.SessionRequest(request_id=f"d{i}", start_generate=start))
    await call.read()
    await eventually(lambda: slots.in_flight == 3)
    await channel.close()  # the client vanishes
    await eventually(lambda: slots.in_flight == 0 and engine.active == 0)


async def test_closing_the_engine_ends_streams_in_flight_cancelled(sim: Any) -> None:
    sim.step_seconds = 0.005
    engine = TrtllmEngine(double_config())
    await engine.start()
    stream = engine.stream(request(max_tokens=400))
    await anext(stream)
    closing = asyncio.create_task(engine.aclose())
    events = [event async for event in stream]
    await closing
    assert isinstance(events[-1], EngineFinished)
    assert events[-1].reason is FinishReason.CANCELLED
    assert not engine.healthy()


# -- stops, UTF-8, logprobs -------------------------------------------------------------------------------------------


async def test_a_stop_string_is_matched_here_never_streamed_and_aborts_the_request(sim: Any) -> None:
    sim.step_seconds = 0.005
    async with running() as engine:
        deltas, finished = await run(engine, request("abcdefgh", max_tokens=100, stop=("efg",)))
        assert "".join(d.text for d in deltas) == "abcd"
        assert finished.reason is FinishReason.STOP_SEQUENCE
        assert finished.stop_sequence == "efg"
        assert finished.usage.output_tokens == sum(len(d.token_ids) for d in deltas) == 3
        await eventually(lambda: executor(engine).in_flight == 0)  # TensorRT-LLM knew no stop: it was aborted


async def test_utf8_characters_are_never_split(sim: Any) -> None:
    async with running() as engine:
        deltas, _ = await run(engine, request("🦩é🦩", max_tokens=12))
        assert "".join(d.text for d in deltas) == "🦩é🦩" * 3
        assert all("\ufffd" not in d.text for d in deltas)
        assert any(d.token_ids and not d.text for d in deltas)  # a piece that ended inside a flamingo waited


async def test_logprobs_in_both_shapes(sim: Any) -> None:
    async with running() as engine:
        deltas, _ = await run(engine, request(max_tokens=3, top_logprobs=2))
        logprobs = [lp for d in deltas for lp in d.logprobs]
        assert [lp.token.token_id for lp in logprobs] == [t for d in deltas for t in d.token_ids]
        assert all(len(lp.top) == 2 and lp.top[0].token_id == lp.token.token_id for lp in logprobs)
        assert all(lp.top[0].logprob > lp.top[1].logprob for lp in logprobs)
        deltas, _ = await run(engine, request(max_tokens=3, top_logprobs=0))
        assert all(len(lp.top) == 0 for d in deltas for lp in d.logprobs)
        assert deltas[0].logprobs
    with double() as floats:
        floats.logprobs_format = "float"
        async with running() as engine:
            deltas, _ = await run(engine, request(max_tokens=3, top_logprobs=2))
            assert all(lp.top == () and lp.token.logprob < 0 for d in deltas for lp in d.logprobs)


def test_logprob_shapes_and_a_shortfall_map_by_position() -> None:
    class Lp:
        def __init__(self, logprob: float, rank: int | None) -> None:
            self.logprob, self.rank = logprob, rank

    entries = [{7: Lp(-0.5, 1), 9: Lp(-1.0, 2)}, {8: Lp(-math.inf, 3), 1: Lp(-0.1, 1)}]
    mapped = token_logprobs([6, 7, 8], entries, 0, 3, 1)  # one logprob short: the first token has none
    assert [m.token.token_id for m in mapped] == [7, 8]
    assert mapped[1].token.logprob == -9999.0
    assert [t.token_id for t in mapped[1].top] == [1]
    assert [m.token.logprob for m in token_logprobs([4, 5], [-0.25, -0.5], 1, 2, 3)] == [-0.5]


# -- requests refused before the first output --------------------------------------------------------------------------


async def test_requests_are_refused_before_any_output(sim: Any) -> None:
    async with running(double_config(enable_chunked_prefill=False, max_num_tokens=32)) as engine:
        cases = [
            (request("x" * 200, max_tokens=1), "PROMPT_TOO_LONG"),  # 68 tokens > max_num_tokens, no chunking
            (request("word " * 400, max_tokens=1), "PROMPT_TOO_LONG"),  # past max_seq_len
            (request((5, 1 << 30)), "TOKEN_ID_OUT_OF_RANGE"),
            (request(sampling=SamplingParams(temperature=math.nan)), "SAMPLING_OUT_OF_RANGE"),
        ]
        for req, reason in cases:
            with pytest.raises(InvalidArgument) as error:
                await anext(engine.stream(req))
            assert error.value.reason == reason
        assert engine.active == 0
        assert executor(engine).in_flight == 0


async def test_a_value_error_from_tensorrt_llm_sampling_params_is_invalid_argument(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorrt_llm.sampling_params import SamplingParams as TrtSamplingParams

    def refuse(self: Any) -> None:
        raise ValueError("require something else")

    async with running() as engine:
        monkeypatch.setattr(TrtSamplingParams, "_validate", refuse)
        with pytest.raises(InvalidArgument, match="require something else") as error:
            await anext(engine.stream(request()))
        assert error.value.reason == "REQUEST_REJECTED"


async def test_chat_prompts_use_the_template_and_are_refused_without_one(sim: Any) -> None:
    chat = (ChatMessage("user", "hi"),)
    async with running() as engine:
        deltas, finished = await run(engine, request(chat, max_tokens=2))
        assert "".join(d.text for d in deltas) == "user: "  # the templated prompt "user: hi\nassistant: " repeated
        assert finished.usage.input_tokens == 1 + math.ceil(len("user: hi\nassistant: ") / 3)
    sim.chat_template = False
    async with running() as engine:
        assert not engine.models[0].supports_chat
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request(chat)))
        assert error.value.reason == "CHAT_TEMPLATE_MISSING"  # as the edge says it (validation.py)


# -- failures after acceptance ----------------------------------------------------------------------------------------


async def test_a_request_tensorrt_llm_fails_ends_internal_and_the_engine_goes_on(sim: Any) -> None:
    async with running() as engine:
        sim.request_error_after = 2
        with pytest.raises(Internal) as error:
            await run(engine, request(max_tokens=10))
        assert error.value.reason == "ENGINE_REQUEST_FAILED"
        sim.request_error_after = None
        sim.final_without_reason_after = 1  # a final response without a finish reason: 1.2.1's fold raises
        with pytest.raises(Internal):
            await run(engine, request(max_tokens=10))
        sim.final_without_reason_after = None
        assert engine.healthy()
        assert engine.active == 0
        _, finished = await run(engine, request(max_tokens=2))
        assert finished.reason is FinishReason.LENGTH


async def test_engine_timeout_is_deadline_exceeded(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorrt_llm.bindings.executor import FinishReason as TrtFinish
    from tensorrt_llm.executor.result import GenerationResultBase

    original = GenerationResultBase._handle_sequence

    def timed_out(self: Any, reasons: Any, response: Any, index: int) -> None:
        original(self, [TrtFinish.TIMED_OUT] if response.finish_reasons[0] else reasons, response, index)

    async with running() as engine:
        monkeypatch.setattr(GenerationResultBase, "_handle_sequence", timed_out)
        with pytest.raises(DeadlineExceeded) as error:
            await run(engine, request(max_tokens=2))
        assert error.value.reason == "ENGINE_TIMEOUT"


# -- the configuration ------------------------------------------------------------------------------------------------


def test_extra_llm_args_are_checked_against_tensorrt_llm_at_construction(sim: Any) -> None:
    with pytest.raises(ConfigurationError, match="no_such_knob"):  # never sent to a client: the server exits 2
        TrtllmEngine(double_config(extra_llm_args={"print_iter_log": True, "no_such_knob": 1}))
    for owned in ({"max_batch_size": 4}, {"stream_interval": 4}, {"sampler_type": "TorchSampler"}):
        with pytest.raises(ConfigurationError, match=r"trtllm\.<field>"):
            TrtllmEngine(double_config(extra_llm_args=owned))
    engine = TrtllmEngine(double_config(extra_llm_args={"print_iter_log": True}, stream_interval=4))
    assert engine._kwargs["print_iter_log"] is True
    assert (engine._kwargs["stream_interval"], engine._kwargs["sampler_type"]) == (4, "auto")
    assert engine._kwargs["kv_cache_config"].free_gpu_memory_fraction == 0.9
    assert str(engine._kwargs["scheduler_config"].capacity_scheduler_policy) == "GUARANTEED_NO_EVICT"


def test_without_a_gpu_or_a_model_the_engine_says_what_to_do(sim: Any) -> None:
    sim.device_count = 0
    with pytest.raises(ConfigurationError) as no_gpu:
        TrtllmEngine(double_config())
    assert "no CUDA GPU is visible" in str(no_gpu.value)
    assert INSTALL_HELP in str(no_gpu.value)
    sim.device_count = 1
    with pytest.raises(ConfigurationError, match="tensor_parallel_size"):  # two nodes of two GPUs: two must be here
        TrtllmEngine(double_config(tensor_parallel_size=4, extra_llm_args={"gpus_per_node": 2}))
    with pytest.raises(ConfigurationError, match="RILLET_TRTLLM__MODEL"):
        TrtllmEngine(TrtllmConfig())


def test_rillet_serve_without_tensorrt_llm_exits_within_seconds_with_the_install_paragraph() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rillet.server.cli", "serve", "--text-engine", "trtllm", "--speech-engine", "none"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RILLET_PORT": "0", "COLUMNS": "400"},
        cwd=REPO,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 30  # seconds: nothing is loaded (the bound is for a busy CI host)
    assert "Traceback" not in done.stderr
    paragraph = " ".join(done.stderr.split())
    assert 'pip install --extra-index-url https://pypi.nvidia.com "rillet[trtllm]"' in paragraph
    assert "nvcr.io/nvidia/tensorrt-llm/release:1.2.1" in paragraph


# -- the real engine, where there is one ------------------------------------------------------------------------------


def _real_tensorrt_llm() -> str | None:
    spec = importlib.util.find_spec("tensorrt_llm") if str(DOUBLES) not in sys.path else None
    if spec is None or spec.origin is None or Path(spec.origin).resolve().is_relative_to(DOUBLES):
        return "tensorrt_llm is not installed (pip install --extra-index-url https://pypi.nvidia.com '.[trtllm]')"
    if not os.environ.get("RILLET_TRTLLM__MODEL"):
        return "set RILLET_TRTLLM__MODEL to a small local Hugging Face checkpoint (e.g. TinyLlama-1.1B)"
    return None


def _real_config(**overrides: Any) -> TrtllmConfig:
    """The settings the `gpu` tests run the real engine with; the test is skipped where there is no real one."""
    reason = _real_tensorrt_llm()
    if reason is not None:
        pytest.skip(reason)
    settings: dict[str, Any] = {"model": os.environ["RILLET_TRTLLM__MODEL"], "max_batch_size": 8, "max_seq_len": 1024}
    return TrtllmConfig(**(settings | overrides))


@pytest.mark.gpu
async def test_the_real_engine_streams_cancels_and_stops_on_a_gpu() -> None:
    config = _real_config()
    try:
        engine = TrtllmEngine(config)
    except EngineDead as error:
        pytest.skip(f"no usable GPU: {error.message[:120]}")
    await engine.start()
    try:
        deltas, finished = await run(engine, request("The capital of France is", max_tokens=16))
        assert finished.usage.output_tokens == sum(len(d.token_ids) for d in deltas) > 0
        stream = engine.stream(request("Count: 1, 2, 3,", max_tokens=500))
        await anext(stream)
        await stream.aclose()
        assert engine.active == 0
        text = "".join(d.text for d in deltas)
        stop = text.strip()[:3]
        if stop:
            deltas, finished = await run(engine, request("The capital of France is", max_tokens=16, stop=(stop,)))
            assert stop not in "".join(d.text for d in deltas)
    finally:
        await engine.aclose()


@pytest.mark.gpu
async def test_the_real_samplers_behave_as_facts_md_records() -> None:
    """What FACTS.md could not verify in source, settled on a GPU: engine/trtllm/api.py's capabilities rest on it."""
    config = _real_config()
    story, count = "Once upon a time, in a city nobody remembers,", "Count with me: 1, 2, 3, 4,"
    seeded = {"temperature": 1.0, "top_k": 0, "seed": 7}  # an open prompt at temperature 1: runs differ unless seeded

    async def tokens(engine: TrtllmEngine, prompt: str, **params: Any) -> list[int]:
        from tensorrt_llm import SamplingParams as TrtSamplingParams

        llm = engine._llm
        assert llm is not None
        result = llm.generate_async(inputs=prompt, sampling_params=TrtSamplingParams(max_tokens=24, **params))
        return list((await result.aresult()).outputs[0].token_ids)

    async with running(config) as torch:
        deltas, _ = await run(torch, request("The capital of France is", max_tokens=8, top_logprobs=2))
        for lp in (lp for d in deltas for lp in d.logprobs):  # greedy: the emitted token is the top candidate
            assert lp.top[0].token_id == lp.token.token_id
        assert await tokens(torch, story, **seeded) != await tokens(torch, story, **seeded), "TorchSampler used a seed"
        plain = await tokens(torch, count, temperature=0.0)
        assert plain == await tokens(torch, count, temperature=0.0, repetition_penalty=2.0), "it applied a penalty"
    async with running(_real_config(sampler=TrtllmSampler.TRTLLM)) as trtllm:
        assert await tokens(trtllm, story, **seeded) == await tokens(trtllm, story, **seeded), "it ignored the seed"
        plain = await tokens(trtllm, count, temperature=0.0)
        assert plain != await tokens(trtllm, count, temperature=0.0, repetition_penalty=2.0), "it ignored the penalty"


@pytest.mark.gpu
async def test_the_real_engine_tokenizes_as_it_generates_and_reports_its_kv_cache() -> None:
    """The control plane on a GPU: Tokenize counts what generation reads, KV use rises under load and falls back."""
    async with running(_real_config()) as engine:
        assert isinstance(engine, KvCacheReporting)
        prompt = "The capital of France is"
        deltas, finished = await run(engine, request(prompt, max_tokens=16))
        assert len(engine.tokenize("m", prompt)) == finished.usage.input_tokens
        ids = [t for d in deltas for t in d.token_ids]
        assert engine.detokenize("m", ids) == "".join(d.text for d in deltas)
        if engine.models[0].supports_chat:
            chat = (ChatMessage("user", "Name a colour."),)
            _, finished = await run(engine, request(chat, max_tokens=4))
            assert len(engine.tokenize("m", chat)) == finished.usage.input_tokens

        streams = [engine.stream(request(f"Story {n}: once upon a time", max_tokens=600)) for n in range(6)]
        for stream in streams:
            await anext(stream)
        await eventually(lambda: engine.kv_cache_utilization() > 0, timeout=30)
        for stream in streams:
            await stream.aclose()
        await eventually(lambda: engine.kv_cache_utilization() == 0.0, timeout=30)
