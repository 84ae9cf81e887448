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


async def _collect(result: Any) -> list[tuple[str, list[int], str | None]]:
    steps = []
    async for output in result:
        completion = output.outputs[0]
        steps.append((completion.text, list(completion.token_ids), completion.finish_reason))
    return steps


async def test_requests_run_in_flight_up_to_max_batch_size(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    llm = LLM(model="double", max_batch_size=3)
    try:
        results = [
            llm.generate_async(f"prompt {i}", sampling_params=SamplingParams(max_tokens=4), streaming=True)
            for i in range(7)
        ]
        runs = await asyncio.gather(*(_collect(r) for r in results))
        assert all(run[-1][2] == "length" and len(run[-1][1]) == 4 for run in runs)
        executor = llm._executor
        assert executor is not None
        assert executor.largest_batch == 3  # batched, never past the limit
        assert executor.in_flight == 0
    finally:
        llm.shutdown()


async def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.executor.utils import RequestError

    long_prompt = "x" * 300  # 101 tokens of three bytes (BOS included)
    chunked = LLM(model="double", max_num_tokens=32, enable_chunked_prefill=True)
    try:
        short = chunked.generate_async("hi", sampling_params=SamplingParams(max_tokens=8), streaming=True)
        long = chunked.generate_async(long_prompt, sampling_params=SamplingParams(max_tokens=1), streaming=True)
        short_run, long_run = await asyncio.gather(_collect(short), _collect(long))
        assert long_run[-1][2] == "length"
        assert len(short_run) == 8  # the short request decoded one token per step throughout
    finally:
        chunked.shutdown()
    whole = LLM(model="double", max_num_tokens=32)
    try:
        with pytest.raises(RequestError, match="max_num_tokens"):
            whole.generate_async(long_prompt, streaming=True)
    finally:
        whole.shutdown()


async def test_abort_ends_the_request_cancelled_and_frees_its_slot(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    sim.step_seconds = 0.01
    llm = LLM(model="double", max_batch_size=1)
    try:
        result = llm.generate_async("abort me", sampling_params=SamplingParams(max_tokens=1000), streaming=True)
        await anext(aiter(result))
        result.abort()
        assert result.aborted()
        steps = await _collect(result)
        assert steps[-1][2] == "cancelled"
        assert result.finished
        executor = llm._executor
        assert executor is not None
        assert executor.in_flight == 0
        after = await _collect(llm.generate_async("next", sampling_params=SamplingParams(max_tokens=2), streaming=True))
        assert after[-1][2] == "length"
    finally:
        llm.shutdown()


async def test_quirks_token_ids_diff_is_stale_with_n_above_one_and_stop_words_truncate(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    llm = LLM(model="double")
    try:
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
    finally:
        llm.shutdown()


async def test_text_grows_by_whole_characters(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams

    llm = LLM(model="double")
    try:
        steps = await _collect(
            llm.generate_async("🦩🦩🦩", sampling_params=SamplingParams(max_tokens=8), streaming=True)
        )
        texts = [text for text, _, _ in steps]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        assert "\ufffd" not in texts[-1]
        assert "🦩" in texts[-1]
        assert any(a == b for a, b in itertools.pairwise(texts))  # a step that held half a flamingo back
    finally:
        llm.shutdown()


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


def test_facts_name_only_real_files(sim: Any) -> None:
    text = FACTS.read_text(encoding="utf-8")
    assert "1.2.1" in text
    assert "58fb435eacc402f3bd177e60f592c955d2b0719d" in text
    for module in Path(DOUBLES / "tensorrt_llm").rglob("*.py"):
        first = module.read_text(encoding="utf-8").split("\n", 1)[0]
        assert first.startswith('"""'), f"{module} has no module docstring"
        assert "_double" in module.parts or "Mirror" in first or "TEST DOUBLE" in first, f"{module} cites nothing"
