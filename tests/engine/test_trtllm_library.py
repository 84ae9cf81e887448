"""The trtllm engine against TensorRT-LLM 1.2.1 as it really behaves: each case a quirk the strict double mirrors.

One test per defect the 1.2.1 source review found (research/trtllm-1.2.1-review-2026-12.md §1): multi-node GPU
counts, samplers that ignore what they are given, logprobs that are not there, chat templates that raise jinja2's
TemplateError, a worker process that dies, and the smaller ones.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from rillet.client import Client, InternalError
from rillet.server.app import RilletServer, serve
from rillet.server.config import Settings
from rillet.server.engine.trtllm import TrtllmEngine, token_logprobs
from rillet.server.errors import ConfigurationError, EngineDead, Internal, InvalidArgument
from rillet.server.types import (
    ChatMessage,
    Constraint,
    ConstraintKind,
    FinishReason,
    SamplingParams,
    TraceContext,
)
from rillet.server.types import TokenDelta as EngineDelta
from tests.conftest import eventually
from tests.contract.test_server import health_of
from tests.doubles.trtllm import double, double_config, executor, request, run, running

SAMPLED = SamplingParams(temperature=0.8)


class WorkerCrash(Exception):
    """What a dying worker process leaves in the proxy's error queue: of any type (here not a RuntimeError)."""


@pytest.fixture
def sim() -> Iterator[Any]:
    with double() as simulation:
        yield simulation


# -- 1. GPUs are counted per node, as TensorRT-LLM counts them --------------------------------------------------------


async def test_a_multi_node_launch_needs_only_this_nodes_share_of_the_gpus(sim: Any) -> None:
    sim.device_count = 8  # rank 0 of TP=16 over two nodes of 8 (deploy/gpu/README.md "Several nodes")
    async with running(double_config(tensor_parallel_size=16)) as engine:
        _, finished = await run(engine, request(max_tokens=2))
        assert finished.reason is FinishReason.LENGTH
    sim.device_count = 4  # with gpus_per_node = 8 (two nodes of 8), 8 of the 16 must run here
    with pytest.raises(ConfigurationError, match="8 on this node"):
        TrtllmEngine(double_config(tensor_parallel_size=16, extra_llm_args={"gpus_per_node": 8}))


async def test_under_ray_the_gpu_count_is_left_to_tensorrt_llm(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_LOCAL_WORLD_SIZE", "2")  # Ray's workers hold the GPUs, not this process
    sim.device_count = 1
    async with running(double_config(tensor_parallel_size=2)) as engine:
        _, finished = await run(engine, request(max_tokens=2))
        assert finished.usage.output_tokens == 2


# -- 2-4. What the default sampler (TorchSampler) does not honour is refused by name ---------------------------------


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (SamplingParams(temperature=0.8, seed=7), "seed"),
        (SamplingParams(temperature=0.8, repetition_penalty=1.2), "repetition_penalty"),
        (SamplingParams(temperature=0.8, min_p=0.05), "min_p"),
    ],
    ids=["seed", "repetition_penalty", "min_p"],
)
async def test_the_default_sampler_refuses_the_fields_it_would_ignore(
    sim: Any, sampling: SamplingParams, field: str
) -> None:
    async with running() as engine:
        caps = engine.models[0].capabilities
        assert caps is not None
        assert field not in caps.sampling
        assert not caps.reproducible_seed
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request(sampling=sampling)))
        assert (error.value.reason, error.value.field) == ("FIELD_UNSUPPORTED", f"params.sampling.{field}")
        assert executor(engine).in_flight == 0


async def test_logprobs_under_sampling_are_refused_where_the_sampled_token_may_be_missing(sim: Any) -> None:
    async with running() as engine:
        caps = engine.models[0].capabilities
        assert caps is not None
        assert caps.logprobs
        assert not caps.sampled_logprobs
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request(sampling=SAMPLED, top_logprobs=1)))
        assert (error.value.reason, error.value.field) == ("FIELD_UNSUPPORTED", "params.top_logprobs")


async def test_an_output_constraint_is_refused_not_ignored(sim: Any) -> None:
    async with running() as engine:
        caps = engine.models[0].capabilities
        assert caps is not None
        assert not caps.constraints
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request(constraint=Constraint(ConstraintKind.REGEX, "[0-9]+"))))
        assert (error.value.reason, error.value.field) == ("CONSTRAINT_UNSUPPORTED", "params.regex")
        assert executor(engine).in_flight == 0


def test_a_logprob_tensorrt_llm_did_not_report_is_never_invented() -> None:
    class Lp:
        def __init__(self, logprob: float, rank: int) -> None:
            self.logprob, self.rank = logprob, rank

    with pytest.raises(Internal) as error:  # the emitted token 5 is not among the top-1 candidates
        token_logprobs([5], [{9: Lp(-0.1, 1)}], 0, 1, 1)
    assert error.value.reason == "LOGPROB_MISSING"


# -- 5. Chat templates raise jinja2's TemplateError ------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [(("assistant", "hi"),), (("user", "a"), ("user", "b")), (("tool", "{}"),)],
    ids=["assistant-first", "two-users", "unknown-role"],
)
async def test_a_template_that_refuses_the_conversation_is_invalid_argument(
    sim: Any, messages: tuple[tuple[str, str], ...]
) -> None:
    chat = tuple(ChatMessage(role, content) for role, content in messages)
    async with running() as engine:
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request(chat)))
        assert (error.value.reason, error.value.field) == ("CHAT_TEMPLATE_UNSUPPORTED", "params.chat")
        assert "alternate" in error.value.message
        assert engine.healthy()


# -- 6. A worker that dies -------------------------------------------------------------------------------------------


async def test_a_dead_worker_fails_every_stream_in_flight_with_engine_dead_and_flips_health(sim: Any) -> None:
    sim.step_seconds = 0.005
    async with running() as engine:
        streams = [engine.stream(request(f"stream {i} ", max_tokens=400)) for i in range(3)]
        for stream in streams:
            assert isinstance(await anext(stream), EngineDelta)
        assert engine.healthy()
        sim.worker_death = WorkerCrash("CUDA error: an illegal memory access was encountered")

        async def drain(stream: Any) -> BaseException | None:
            try:
                async for _ in stream:
                    pass
            except Exception as exc:
                return exc
            return None

        # A guard against a hang, not a timing: TensorRT-LLM itself never answers these streams again.
        errors = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams)), timeout=30)
        assert all(isinstance(e, EngineDead) for e in errors), errors
        assert all("illegal memory access" in e.message for e in errors if isinstance(e, EngineDead))
        assert not engine.healthy()
        assert engine.active == 0
        with pytest.raises(EngineDead):
            await anext(engine.stream(request()))


async def test_a_worker_that_died_while_idle_is_found_by_health_and_the_next_request(sim: Any) -> None:
    async with running() as engine:
        sim.worker_death = WorkerCrash("NCCL error: unhandled system error")
        await eventually(lambda: executor(engine).died is not None)
        assert not engine.healthy()  # the library's proxy only learns it at the next submit; the engine asks first
        with pytest.raises(EngineDead, match="NCCL"):
            await anext(engine.stream(request()))


async def test_the_error_a_dead_worker_queued_surfaces_at_the_next_submit_as_engine_dead(sim: Any) -> None:
    async with running() as engine:
        sim.worker_death = WorkerCrash("the worker process exited")
        await eventually(lambda: executor(engine).died is not None)
        with pytest.raises(EngineDead, match="worker process exited"):  # the proxy raises it there: never raw
            await anext(engine.stream(request()))
        assert not engine.healthy()


async def test_a_dead_worker_ends_the_server_as_other_engines_deaths_do(sim: Any) -> None:
    sim.step_seconds = 0.005
    engine = TrtllmEngine(double_config())
    server = RilletServer(Settings(port=0, speech_engine="none"), [engine])
    serving = asyncio.create_task(serve(server.settings, server))
    await eventually(lambda: server.router.started, timeout=30)
    assert await health_of(server.port) == health_pb2.HealthCheckResponse.SERVING
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        stream = client.generate("in flight", max_tokens=400, temperature=0.0)
        iterator = aiter(stream)
        await anext(iterator)
        sim.worker_death = WorkerCrash("CUDA error: unspecified launch failure")
        with pytest.raises(InternalError) as error:
            async for _ in iterator:
                pass
        assert error.value.reason == "ENGINE_DEAD"
    assert await asyncio.wait_for(serving, timeout=60) == 1  # a guard against a hang, not a timing
    assert server.engine_died


# -- 7. The smaller ones ---------------------------------------------------------------------------------------------


async def test_a_request_error_at_submit_is_not_taken_for_a_long_prompt(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorrt_llm.executor.utils import RequestError
    from tensorrt_llm.llmapi.llm import BaseLLM

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RequestError("lora_request is not supported for this model")

    async with running() as engine:
        monkeypatch.setattr(BaseLLM, "_check_arguments", refuse)
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request()))
        assert error.value.reason == "REQUEST_REJECTED"
        assert "lora_request" in error.value.message
        assert engine.healthy()


async def test_a_stop_string_in_the_final_response_does_not_abort_a_finished_request(sim: Any) -> None:
    async with running() as engine:
        deltas, finished = await run(engine, request("abcdefgh", max_tokens=3, stop=("fgh",)))
        assert finished.reason is FinishReason.STOP_SEQUENCE  # matched in the third and last token's response
        assert "".join(d.text for d in deltas) == "abcde"
        assert executor(engine).cancels == 0  # TensorRT-LLM had finished it: no CancellingRequest was sent


async def test_token_ids_are_checked_against_the_models_own_vocabulary(sim: Any) -> None:
    from tensorrt_llm._double.tokenizer import VOCAB_SIZE

    rows = VOCAB_SIZE - 16  # config.json's vocab_size below len(tokenizer): ids past it have no embedding row
    sim.model_vocab_size = rows
    async with running() as engine:
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request((5, VOCAB_SIZE - 1))))
        assert error.value.reason == "TOKEN_ID_OUT_OF_RANGE"
        assert f"0..{rows - 1}" in error.value.message
        assert engine.healthy()
        assert executor(engine).died is None  # the device-side assert never happened


async def test_a_generation_config_end_of_turn_token_finishes_with_stop(sim: Any) -> None:
    sim.eot_after = 3  # Llama 3's <|eot_id|>: a stop word TensorRT-LLM cuts from token_ids in the same fold
    async with running() as engine:
        deltas, finished = await run(engine, request(max_tokens=50))
        assert finished.reason is FinishReason.STOP
        assert finished.usage.output_tokens == 3 == sum(len(d.token_ids) for d in deltas)
        assert "eot" not in "".join(d.text for d in deltas)


def test_every_logprob_reported_is_one_tensorrt_llm_gave() -> None:
    class Lp:
        def __init__(self, logprob: float, rank: int) -> None:
            self.logprob, self.rank = logprob, rank

    mapped = token_logprobs([7, 8], [{7: Lp(-0.5, 1)}, {8: Lp(-math.inf, 2), 1: Lp(-0.1, 1)}], 0, 2, 1)
    assert [m.token.logprob for m in mapped] == [-0.5, -9999.0]  # a masked (-inf) value is floored, as servers do


# -- The samplers: TRTLLMSampler honours what TorchSampler cannot -----------------------------------------------------


async def test_trtllm_sampler_honours_seeds_and_penalties_and_refuses_logprobs(sim: Any) -> None:
    async with running(double_config(sampler="TRTLLMSampler")) as engine:
        caps = engine.models[0].capabilities
        assert caps is not None
        assert caps.reproducible_seed
        assert caps.sampling == {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"}
        seeded = SamplingParams(temperature=0.8, seed=7)
        first, _ = await run(engine, request(max_tokens=6, sampling=seeded))
        again, _ = await run(engine, request(max_tokens=6, sampling=seeded))
        penalized, _ = await run(engine, request(max_tokens=6, sampling=SamplingParams(0.8, seed=7, min_p=0.1)))
        ids = [[t for d in deltas for t in d.token_ids] for deltas in (first, again, penalized)]
        assert ids[0] == ids[1]
        assert ids[0] != ids[2]  # min_p reached the sampler
        unseeded = [await run(engine, request(max_tokens=6, sampling=SAMPLED)) for _ in range(2)]
        assert unseeded[0][0] != unseeded[1][0]  # the C++ sampler's fixed default seed is never left to apply
        with pytest.raises(InvalidArgument) as error:  # it reports the sampled token's logprob alone: no top-k
            await anext(engine.stream(request(top_logprobs=2)))
        assert error.value.field == "params.top_logprobs"


# -- Using what 1.2.1 gives: perf metrics, trace headers, cache salt, stream interval, postprocess workers -----------


async def test_perf_metrics_split_the_time_to_first_token_into_engine_queue_and_prefill(sim: Any) -> None:
    sim.step_seconds = 0.005
    async with running(double_config(max_batch_size=1)) as engine:
        first, second = await asyncio.gather(run(engine, request(max_tokens=4)), run(engine, request(max_tokens=4)))
        waited = max(first[1].engine_queue_seconds, second[1].engine_queue_seconds)
        assert waited > 0  # one of them waited in TensorRT-LLM's own queue for the single slot
        assert all(f.prefill_seconds is not None and f.prefill_seconds >= 0 for _, f in (first, second))
    async with running(double_config(return_perf_metrics=False)) as engine:
        _, finished = await run(engine, request(max_tokens=2))
        assert finished.engine_queue_seconds == 0.0
        assert finished.prefill_seconds is None  # TensorRT-LLM's queue and prefill cannot be told apart without them
        assert finished.first_output_seconds is not None  # from submission to the first output, queueing included
        assert finished.first_output_seconds > 0


async def test_the_requests_trace_context_reaches_tensorrt_llm_as_trace_headers(sim: Any) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with running() as engine:
        stream = engine.stream(request(max_tokens=50, trace=TraceContext(parent, "rillet=1")))
        await anext(stream)
        (result,) = engine._in_flight
        assert result.trace_headers == {"traceparent": parent, "tracestate": "rillet=1"}
        await stream.aclose()
        stream = engine.stream(request(max_tokens=50))
        await anext(stream)
        (result,) = engine._in_flight
        assert result.trace_headers is None
        await stream.aclose()


async def test_prefix_reuse_is_scoped_by_the_tenants_cache_salt(sim: Any) -> None:
    memo = "CONFIDENTIAL: the acquisition closes on the ninth of March at forty-one dollars a share. " * 2
    async with running() as engine:

        async def cached(scope: str, tail: str) -> int:
            _, finished = await run(engine, request(memo + tail, max_tokens=2, cache_scope=scope))
            return finished.usage.cached_input_tokens

        assert await cached("tenant:acme", "A") == 0
        assert await cached("tenant:beta", "B") == 0  # acme's blocks are salted with acme's scope
        assert await cached("tenant:acme", "C") > 0  # acme still reuses its own (whole blocks)
        assert await cached("", "D") == 0  # no scope: no salt, and salted blocks never match it
        assert await cached("", "E") > 0


async def test_two_tenants_through_the_server_share_no_cached_prompt(sim: Any, make_server: Any) -> None:
    tokens = {"acme": "acme-3f9a1c", "beta": "beta-77d0e2"}
    tenants = {name: {"tokens": [token]} for name, token in tokens.items()}
    engine = TrtllmEngine(double_config())
    server = await make_server(engines=[engine], security={"tenants": tenants})
    memo = "To the board: the merger closes on the ninth of March, and the announcement stays embargoed. " * 2

    async def cached(tenant: str, tail: str) -> int:
        async with Client.connect(f"127.0.0.1:{server.port}", token=tokens[tenant]) as client:
            events = [event async for event in client.generate(memo + tail, max_tokens=2, temperature=0)]
        return events[-1].usage.cached_input_tokens  # type: ignore[union-attr]

    assert await cached("acme", "A") == 0
    assert await cached("beta", "B") == 0
    computed, prompt = executor(engine).last_admitted
    assert computed == prompt  # beta's prefill computed every token: no head start it could time
    assert await cached("acme", "C") > 0


async def test_stream_interval_and_postprocess_workers_change_delivery_not_output(sim: Any) -> None:
    async with running() as engine:
        reference, _ = await run(engine, request(max_tokens=12))
    for settings in ({"stream_interval": 4}, {"num_postprocess_workers": 2}):
        async with running(double_config(**settings)) as engine:
            deltas, finished = await run(engine, request(max_tokens=12))
            assert "".join(d.text for d in deltas) == "".join(d.text for d in reference)
            assert finished.usage.output_tokens == 12 == sum(len(d.token_ids) for d in deltas)
            if "stream_interval" in settings:
                assert [len(d.token_ids) for d in deltas] == [1, 3, 4, 4]  # the first at once, then 4 at a time
