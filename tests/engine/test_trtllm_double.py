"""The TensorRT-LLM test double: its surface matches the recorded 1.2.1 facts, and it behaves like the real executor."""

from __future__ import annotations

import asyncio
import enum
import importlib
import inspect
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.doubles.trtllm import DOUBLES, double

FACTS = DOUBLES / "tensorrt_llm" / "FACTS.md"
ROW = re.compile(r"^(?P<kind>\w+)\s+(?P<name>[\w.]+)\s*(?P<rest>.*)$")


@pytest.fixture
def sim() -> Iterator[Any]:
    with double() as simulation:
        yield simulation


def facts() -> list[tuple[str, str, str]]:
    text = FACTS.read_text(encoding="utf-8")
    block = text.split("```facts\n", 1)[1].split("```", 1)[0]
    rows = []
    for line in block.splitlines():
        match = ROW.match(line.strip())
        assert match, f"unreadable row in FACTS.md: {line!r}"
        rows.append((match["kind"], match["name"], match["rest"].strip()))
    return rows


def resolve(name: str) -> tuple[Any, Any, str]:
    """(owner, object, last name) for a dotted name: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        owner = obj
        for part in parts[cut:]:
            owner, obj = obj, getattr(obj, part)
        return owner, obj, parts[-1]
    raise AssertionError(f"{name} does not import")


def parameters(function: Any, *, drop_self: bool) -> str:
    """A signature as the facts write it: names and default reprs, `*` before keyword-only ones, no annotations."""
    out: list[str] = []
    star = False
    params = list(inspect.signature(function).parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        out.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return "(" + ", ".join(out) + ")"


@pytest.mark.parametrize(("kind", "name", "expected"), facts(), ids=lambda v: str(v)[:60])
def test_the_double_mirrors_the_recorded_surface(sim: Any, kind: str, name: str, expected: str) -> None:
    if kind == "field":  # a pydantic field: no class attribute, a model_fields entry
        _, model, _ = resolve(name.rsplit(".", 1)[0])
        default = model.model_fields[name.rsplit(".", 1)[1]].default
        value = default.value if isinstance(default, enum.Enum) else default
        assert repr(value) == expected
        return
    owner, obj, last = resolve(name)
    static = inspect.getattr_static(owner, last) if inspect.isclass(owner) else obj
    if kind == "class":
        assert inspect.isclass(obj)
        if expected:
            assert expected in [base.__name__ for base in obj.__mro__]
    elif kind == "attr":
        assert repr(obj) == expected
    elif kind == "init":
        assert inspect.isclass(obj)
        assert parameters(obj.__init__, drop_self=True) == expected
    elif kind in ("method", "function"):
        assert inspect.isfunction(static), f"{name} is not a function"
        assert not inspect.iscoroutinefunction(static), f"{name} is `async def`"
        assert parameters(static, drop_self=kind == "method") == expected
    elif kind == "async":
        assert inspect.iscoroutinefunction(static), f"{name} is not `async def`"
        assert parameters(static, drop_self=True) == expected
    elif kind == "static":
        assert isinstance(static, staticmethod)
        assert parameters(static.__func__, drop_self=False) == expected
    elif kind == "property":
        assert isinstance(static, property), f"{name} is not a property"
    elif kind == "enum":
        assert [member.name for member in obj] == expected.split()
    else:
        pytest.fail(f"unknown kind {kind!r} in FACTS.md")


def worker(llm: Any) -> Any:
    """The simulated worker process behind an LLM of the double (its counters)."""
    assert llm._executor is not None
    return llm._executor.worker


async def _collect(result: Any) -> list[tuple[str, list[int], str | None]]:
    steps = []
    async for output in result:
        completion = output.outputs[0]
        steps.append((completion.text, list(completion.token_ids), completion.finish_reason))
    return steps


async def test_requests_run_in_flight_up_to_max_batch_size(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    with LLM(model="double", max_batch_size=3) as llm:
        results = [
            llm.generate_async(f"prompt {i}", sampling_params=SamplingParams(max_tokens=4), streaming=True)
            for i in range(7)
        ]
        runs = await asyncio.gather(*(_collect(r) for r in results))
        assert all(run[-1][2] == "length" and len(run[-1][1]) == 4 for run in runs)
        executor = worker(llm)
        assert executor.largest_batch == 3  # batched, never past the limit
        assert executor.in_flight == 0


async def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.executor.utils import RequestError

    long_prompt = "x" * 300  # 101 tokens of three bytes (BOS included)
    with LLM(model="double", max_num_tokens=32, enable_chunked_prefill=True) as chunked:
        short = chunked.generate_async("hi", sampling_params=SamplingParams(max_tokens=8), streaming=True)
        long = chunked.generate_async(long_prompt, sampling_params=SamplingParams(max_tokens=1), streaming=True)
        short_run, long_run = await asyncio.gather(_collect(short), _collect(long))
        assert long_run[-1][2] == "length"
        assert len(short_run) == 8  # the short request decoded one token per step throughout
    with LLM(model="double", max_num_tokens=32) as whole, pytest.raises(RequestError, match="max_num_tokens"):
        whole.generate_async(long_prompt, streaming=True)


async def test_abort_ends_the_request_cancelled_and_frees_its_slot(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    sim.step_seconds = 0.01
    with LLM(model="double", max_batch_size=1) as llm:
        result = llm.generate_async("abort me", sampling_params=SamplingParams(max_tokens=1000), streaming=True)
        await anext(aiter(result))
        result.abort()
        assert result.aborted()
        steps = await _collect(result)
        assert steps[-1][2] == "cancelled"
        assert result.finished
        assert worker(llm).in_flight == 0
        after = await _collect(llm.generate_async("next", sampling_params=SamplingParams(max_tokens=2), streaming=True))
        assert after[-1][2] == "length"


async def test_quirks_token_ids_diff_is_stale_with_n_above_one_and_stop_words_truncate(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    with LLM(model="double") as llm:
        params = SamplingParams(max_tokens=3, n=2, temperature=0.7, seed=5)
        result = llm.generate_async("two outputs", sampling_params=params, streaming=True)
        await _collect(result)
        assert all(len(c.token_ids) == 3 for c in result.outputs)
        # The last response carried one output; the other's diff still shows its previous token instead of nothing.
        assert [len(c.token_ids_diff) for c in result.outputs] == [1, 1]
        stop = SamplingParams(max_tokens=20, stop=["def"])
        steps = await _collect(llm.generate_async("abcdefgh", sampling_params=stop, streaming=True))
        text, ids, reason = steps[-1]
        assert reason == "stop"
        assert "def" not in text
        assert len(ids) == len(steps) - 1  # one token per step, and the last one (the stop word) cut off again


async def test_text_grows_by_whole_characters(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    with LLM(model="double") as llm:
        steps = await _collect(
            llm.generate_async("🦩🦩🦩", sampling_params=SamplingParams(max_tokens=8), streaming=True)
        )
        texts = [text for text, _, _ in steps]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        assert "\ufffd" not in texts[-1]
        assert "🦩" in texts[-1]
        assert any(a == b for a, b in itertools.pairwise(texts))  # a step that held half a flamingo back


def test_sampling_params_and_llm_arguments_are_checked_like_the_real_ones(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    assert SamplingParams(logprobs=0).logprobs == 0
    with pytest.raises(ValueError, match="got invalid argument: no_such_knob"):
        LLM(model="double", no_such_knob=1)
    sim.device_count = 0
    with pytest.raises(RuntimeError, match="CUDA"):
        LLM(model="double")


# -- 1.2.1's quirks, each as the real file has it (FACTS.md) ---------------------------------------------------------


class WorkerCrash(Exception):
    """A worker process's fatal error, of no particular type."""


async def _text(llm: Any, prompt: str, **params: Any) -> list[int]:
    from tensorrt_llm import SamplingParams

    result = llm.generate_async(prompt, sampling_params=SamplingParams(**params), streaming=True)
    steps = await _collect(result)
    return steps[-1][1]


async def test_torch_sampler_ignores_seeds_penalties_and_min_p_and_trtllm_sampler_applies_them(sim: Any) -> None:
    from tensorrt_llm import LLM

    seeded = {"max_tokens": 6, "temperature": 0.8, "seed": 11}
    with LLM(model="double") as torch:  # sampler_type "auto": TorchSampler
        assert await _text(torch, "a prompt", **seeded) != await _text(torch, "a prompt", **seeded)
    with LLM(model="double", sampler_type="TRTLLMSampler") as trtllm:
        first = await _text(trtllm, "a prompt", **seeded)
        assert first == await _text(trtllm, "a prompt", **seeded)  # the request's own seed
        assert first != await _text(trtllm, "a prompt", **(seeded | {"repetition_penalty": 1.3}))
        assert first != await _text(trtllm, "a prompt", **(seeded | {"min_p": 0.1}))
        unseeded = {"max_tokens": 6, "temperature": 0.8}
        assert await _text(trtllm, "a prompt", **unseeded) == await _text(trtllm, "a prompt", **unseeded)  # seed 0
    with pytest.raises(ValueError, match="sampler"):
        LLM(model="double", sampler_type="FlashInferSampler")


async def test_sampled_tokens_are_sometimes_missing_from_torch_samplers_top_k_logprobs(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    for sampler, sampled_alone in (("TorchSampler", False), ("TRTLLMSampler", True)):
        with LLM(model="double", sampler_type=sampler) as llm:
            params = SamplingParams(max_tokens=6, temperature=0.8, logprobs=1)
            result = llm.generate_async("logprobs", sampling_params=params, streaming=True)
            await _collect(result)
            output = result.outputs[0]
            entries: list[dict[int, Any]] = list(output.logprobs)  # type: ignore[arg-type]  # the dict shape
            present = [token in entry for token, entry in zip(output.token_ids, entries, strict=True)]
            if sampled_alone:  # the C++ decoder's log_probs: the sampled token alone, rank 1
                assert all(present)
                assert all(len(entry) == 1 for entry in entries)
            else:  # the distribution's top 1: the sampled token only when it was the most likely
                assert any(present)
                assert not all(present)


def test_world_size_per_node_is_computed_as_the_library_computes_it(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorrt_llm import LLM
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs, _ParallelConfig

    assert _ParallelConfig(16, 1, gpus_per_node=8).world_size_per_node == 8
    assert _ParallelConfig(12, 1, gpus_per_node=8).world_size_per_node == 6
    assert _ParallelConfig(4, 2, gpus_per_node=8).world_size_per_node == 8
    sim.device_count = 8
    assert TorchLlmArgs(model="m", tensor_parallel_size=16).parallel_config.world_size_per_node == 8
    LLM(model="double", tensor_parallel_size=16).shutdown()
    sim.device_count = 4  # gpus_per_node defaults to the GPUs seen here: 4 nodes of 4, 4 each
    LLM(model="double", tensor_parallel_size=16).shutdown()
    with pytest.raises(RuntimeError, match="Only 4 GPUs are available, but 16 are required"):
        LLM(model="double", tensor_parallel_size=16, gpus_per_node=8)  # 2 nodes of 8: 8 must be here
    monkeypatch.setenv("RAY_LOCAL_WORLD_SIZE", "16")
    LLM(model="double", tensor_parallel_size=16, gpus_per_node=8).shutdown()


async def test_generation_config_eos_ids_are_stop_words_cut_from_token_ids(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm._double.tokenizer import EOT

    sim.eot_after = 2
    with LLM(model="double") as llm:
        params = SamplingParams(max_tokens=10)
        result = llm.generate_async("abcdefgh", sampling_params=params, streaming=True)
        steps = await _collect(result)
        assert params.stop_token_ids == [EOT]  # _setup added the generation config's other EOS
        output = result.outputs[0]
        assert (output.finish_reason, output.stop_reason) == ("stop", EOT)
        assert output.token_ids == steps[-2][1]  # the end-of-turn token was appended and cut in the same fold
        assert "eot" not in output.text


async def test_a_cancel_is_answered_a_few_steps_later(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    sim.cancel_steps = 3
    with LLM(model="double") as llm:
        result = llm.generate_async("cancel", sampling_params=SamplingParams(max_tokens=1000), streaming=True)
        await anext(aiter(result))
        result.abort()
        steps = await _collect(result)
        assert steps[-1][2] == "cancelled"
        assert len(steps) > 2  # tokens kept coming until the cancellation reached the worker
        assert worker(llm).in_flight == 0


async def test_a_dead_worker_answers_nothing_and_its_error_surfaces_at_the_next_submit(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    sim.step_seconds = 0.005
    with LLM(model="double") as llm:
        result = llm.generate_async("doomed", sampling_params=SamplingParams(max_tokens=1000), streaming=True)
        await anext(aiter(result))
        sim.worker_death = WorkerCrash("CUDA error: an illegal memory access was encountered")
        await eventually(lambda: worker(llm).died is not None)
        assert llm._check_health()  # 1.2.1's proxy knows nothing until the error is handled
        assert not result.finished
        with pytest.raises(WorkerCrash):  # _handle_background_error at submit: shut down, then raised
            llm.generate_async("next", streaming=True)
        assert not llm._check_health()
        with pytest.raises(RuntimeError, match="LLM is shutting down"):
            llm.generate_async("after", streaming=True)


def test_chat_templates_refuse_conversations_with_template_error(sim: Any) -> None:
    from jinja2.exceptions import TemplateError
    from tensorrt_llm import LLM

    with LLM(model="double") as llm:
        tokenizer = llm.tokenizer
        assert tokenizer is not None
        system_first = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        assert tokenizer.apply_chat_template(system_first, tokenize=True)
        for roles in (["assistant"], ["user", "user"], ["user", "tool"]):
            with pytest.raises(TemplateError, match="alternate"):
                tokenizer.apply_chat_template([{"role": r, "content": "x"} for r in roles], tokenize=True)


async def test_stream_interval_batches_responses_after_the_first_token(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    with LLM(model="double", stream_interval=4) as llm:
        result = llm.generate_async("interval", sampling_params=SamplingParams(max_tokens=10), streaming=True)
        lengths = [len(ids) for _, ids, _ in await _collect(result)]
        assert lengths == [1, 4, 8, 10]  # the first token at once, then every 4 iterations, then the last


async def test_postprocess_workers_send_their_whole_output_back(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    with LLM(model="double", num_postprocess_workers=2) as llm:
        result = llm.generate_async("1, 2, 3, ", sampling_params=SamplingParams(max_tokens=6), streaming=True)
        steps = await _collect(result)
        assert steps[-1] == ("1, 2, 3, 1, 2, 3, ", steps[-1][1], "length")
        assert result.cached_tokens == 0  # only the executor's own responses carry it


async def test_perf_metrics_and_cache_salt(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    prompt = "1, 2, 3, 4, 5, 6, 7, 8, " * 12
    with LLM(model="double", return_perf_metrics=True, max_batch_size=1) as llm:
        first, second = (
            llm.generate_async(prompt, sampling_params=SamplingParams(max_tokens=3), streaming=True, cache_salt="a")
            for _ in range(2)
        )
        await asyncio.gather(_collect(first), _collect(second))
        timing = second.outputs[0].request_perf_metrics.timing_metrics
        assert timing.arrival_time < timing.first_scheduled_time <= timing.first_token_time  # it waited for a slot
        assert second.cached_tokens > 0
        assert second.outputs[0].request_perf_metrics.kv_cache_metrics.num_reused_blocks > 0
        other = llm.generate_async(prompt, sampling_params=SamplingParams(max_tokens=2), streaming=True, cache_salt="b")
        await _collect(other)
        assert other.cached_tokens == 0  # another salt never matches


async def test_iteration_stats_come_only_when_enabled_and_end_at_a_quiet_spell_until_the_next_submission(
    sim: Any,
) -> None:
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.executor.result import IterationResult

    async def take(stats: Any, count: int) -> list[Any]:
        taken = []
        async for iteration in stats:
            taken.append(iteration)
            if len(taken) == count:
                break
        return taken

    sim.step_seconds, sim.kv_cache_tokens = 0.002, 3200  # 100 blocks of 32 tokens
    params = SamplingParams(max_tokens=40)
    with LLM(model="double") as llm:
        assert [s async for s in llm.get_stats_async(5)] == []  # no submission yet: an empty iterable
        await llm.generate_async("1, 2, 3, " * 30, sampling_params=params).aresult()
        assert [s async for s in llm.get_stats_async(0.3)] == []  # enable_iter_perf_stats is off by default
        assert worker(llm).fetch_stats() == []  # the executor recorded none
    with LLM(model="double", enable_iter_perf_stats=True) as llm:
        await llm.generate_async("1, 2, 3, " * 30, sampling_params=params).aresult()  # 91 + 40 tokens: 5 blocks
        stats = await take(llm.get_stats_async(5), 40)  # one per iteration, as JSON parsed
        assert [s["iter"] for s in stats] == sorted(s["iter"] for s in stats)
        assert {s["kvCacheStats"]["maxNumBlocks"] for s in stats} == {100}
        used = [s["kvCacheStats"]["usedNumBlocks"] for s in stats]
        assert used[0] == 3  # the prompt and its first token
        assert max(used) == 5
        assert used[-1] == 0  # the last iteration's stats come after its finished request freed its blocks

        assert [s async for s in llm.get_stats_async(0.1)] == []  # a wait that times out ends it, and marks it done
        done = llm.get_stats_async(5)
        assert isinstance(done, IterationResult)
        done.queue.put_nowait('{"iter": -1}')
        assert [s async for s in done] == []  # done: it ends at once, whatever is queued
        await llm.generate_async("4, 5, ", sampling_params=SamplingParams(max_tokens=2)).aresult()
        queued, *new = await take(llm.get_stats_async(5), 3)  # the submission undid it: what was queued comes first
        assert queued == {"iter": -1}
        assert len(new) == 2


def test_facts_name_only_real_files(sim: Any) -> None:
    text = FACTS.read_text(encoding="utf-8")
    assert "1.2.1" in text
    assert "58fb435eacc402f3bd177e60f592c955d2b0719d" in text
    for module in Path(DOUBLES / "tensorrt_llm").rglob("*.py"):
        first = module.read_text(encoding="utf-8").split("\n", 1)[0]
        assert first.startswith('"""'), f"{module} has no module docstring"
        assert "_double" in module.parts or "Mirror" in first or "TEST DOUBLE" in first, f"{module} cites nothing"
