"""The text engine contract (engine/base.py TextEngine), run on every text engine directly at the engine seam.

Runs compared token for token are each run alone on the engine (a batch's layout may change the numerics).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
from typing import Any

import pytest

from rillet.server.errors import InvalidArgument, ResourceExhausted
from rillet.server.scheduler import Admission
from rillet.server.types import (
    Constraint,
    ConstraintKind,
    FinishReason,
    SamplingParams,
    TextCapabilities,
    TokenDelta,
)
from tests.conftest import eventually
from tests.contract.conftest import Text, TextRun

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEEDED = SamplingParams(temperature=0.8, top_k=40, seed=1234)
SAMPLING_VALUES: dict[str, Any] = {
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "seed": 7,
}
"""A value that asks something of each sampling field (a default value asks nothing and is always accepted)."""


def capabilities(text: Text) -> TextCapabilities:
    """What the engine's model says it honours (ListModels publishes the same)."""
    caps = text.engine.models[0].capabilities
    assert caps is not None, "a text model publishes what it honours"
    return caps


async def test_outputs_then_exactly_one_finish_and_usage_counts_what_was_streamed(text: Text) -> None:
    run = await text.run(text.request(max_tokens=6))  # read_text checks the order and the single finish
    assert run.finished is not None
    assert run.deltas, "the prompt is continued for 24 tokens or more"
    assert len(run.ids) == run.finished.usage.output_tokens
    assert run.finished.usage.input_tokens > 0
    assert text.engine.active == 0


@pytest.mark.parametrize("max_tokens", [1, 5])
async def test_max_tokens_is_honoured(text: Text, max_tokens: int) -> None:
    run = await text.run(text.request(max_tokens=max_tokens))
    assert run.finished is not None
    assert run.finished.reason is FinishReason.LENGTH
    assert run.finished.usage.output_tokens == max_tokens == len(run.ids)


async def test_closing_the_stream_frees_active_and_the_slot(text: Text) -> None:
    stream = text.engine.stream(text.request(max_tokens=200))
    assert isinstance(await anext(stream), TokenDelta)
    assert text.engine.active == 1
    await stream.aclose()
    await eventually(lambda: text.engine.active == 0)
    run = await text.run(text.request(max_tokens=2))
    assert run.finished is not None
    assert run.finished.usage.output_tokens == 2


async def test_cancelling_the_consuming_task_frees_active(text: Text) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in text.engine.stream(text.request(max_tokens=200)):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await eventually(lambda: text.engine.active == 0)


def _stop_across_deltas(reference: TextRun) -> str:
    """Four characters of the reference starting at the last character of its third delta: a match spans outputs."""
    start = len("".join(d.text for d in reference.deltas[:3])) - 1
    stop = reference.text[start : start + 4]
    assert start >= 0, f"the reference is too short: {reference.text!r}"
    assert len(stop) == 4, f"the reference is too short: {reference.text!r}"
    return stop


async def test_a_stop_string_ends_the_stream_and_no_part_of_it_is_streamed(text: Text) -> None:
    reference = await text.run(text.request(max_tokens=16))
    stop = _stop_across_deltas(reference)
    run = await text.run(text.request(max_tokens=16, stop=("never-appears-⟂", stop)))
    assert run.finished is not None
    assert run.finished.reason is FinishReason.STOP_SEQUENCE
    assert run.finished.stop_sequence == stop
    assert run.text == reference.text[: reference.text.index(stop)]
    assert len(run.ids) == run.finished.usage.output_tokens


async def test_text_held_back_for_a_stop_string_that_never_completes_is_released(text: Text) -> None:
    reference = await text.run(text.request(max_tokens=8))
    assert reference.finished is not None
    stop = reference.text[-3:] + "⟂"  # the stream ends while a prefix of it is held back
    run = await text.run(text.request(max_tokens=8, stop=(stop,)))
    assert run.finished is not None
    assert run.finished.reason is reference.finished.reason
    assert run.text == reference.text


async def test_utf8_characters_are_never_split_across_outputs(text: Text) -> None:
    run = await text.run(text.request(text.case.multibyte_prompt, max_tokens=text.case.multibyte_tokens))
    assert any(len(ch.encode()) > 1 for ch in run.text), "the case's prompt must yield multibyte characters"
    for delta in run.deltas[:-1]:  # the last may release an incomplete tail, cut by max_tokens, as U+FFFD
        assert "\ufffd" not in delta.text
    for delta in run.deltas:
        delta.text.encode("utf-8")  # no lone surrogates: every output is whole characters


BAD_SAMPLING = [
    pytest.param({"temperature": -0.5}, id="negative-temperature"),
    pytest.param({"temperature": math.nan}, id="nan-temperature"),
    pytest.param({"top_p": 0.0}, id="zero-top_p"),
    pytest.param({"top_p": 1.5}, id="top_p-above-1"),
    pytest.param({"top_k": -1}, id="negative-top_k"),
    pytest.param({"min_p": 1.5}, id="min_p-above-1"),
    pytest.param({"repetition_penalty": 0.0}, id="zero-repetition_penalty"),
]


@pytest.mark.parametrize("bad", BAD_SAMPLING)
async def test_bad_sampling_fails_before_the_first_output(text: Text, bad: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument) as error:
        await anext(text.engine.stream(text.request(sampling=SamplingParams(**bad))))  # type: ignore[arg-type]
    assert error.value.reason == "SAMPLING_OUT_OF_RANGE"
    assert error.value.metadata["field"] == f"params.sampling.{next(iter(bad))}"
    assert text.engine.active == 0


@pytest.mark.parametrize(
    ("max_tokens", "top_logprobs", "reason"),
    [(0, None, "MAX_TOKENS_OUT_OF_RANGE"), (4, -1, "TOP_LOGPROBS_OUT_OF_RANGE")],
)
async def test_bad_limits_fail_before_the_first_output(
    text: Text, max_tokens: int, top_logprobs: int | None, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        await anext(text.engine.stream(text.request(max_tokens=max_tokens, top_logprobs=top_logprobs)))
    assert error.value.reason == reason
    assert text.engine.active == 0


async def test_a_prompt_longer_than_the_context_fails_before_the_first_output(text: Text) -> None:
    context = text.engine.models[0].context_length
    assert context > 0, "a text model publishes its context length"
    with pytest.raises(InvalidArgument) as error:
        await anext(text.engine.stream(text.request("word " * (context + 16), max_tokens=1)))
    assert error.value.reason == "PROMPT_TOO_LONG"
    assert text.engine.active == 0


async def test_seeded_sampling_is_reproducible_where_promised(text: Text) -> None:
    caps = capabilities(text)
    if not caps.reproducible_seed:
        pytest.skip(f"{text.engine.name} does not promise reproducible seeds")
    sampling = SEEDED if "top_k" in caps.sampling else SamplingParams(temperature=0.8, seed=1234)
    runs = [await text.run(text.request(max_tokens=10, sampling=sampling)) for _ in range(2)]
    assert runs[0].ids == runs[1].ids
    assert runs[0].text == runs[1].text


@pytest.mark.parametrize("field", sorted(SAMPLING_VALUES))
async def test_a_sampling_field_is_honoured_or_refused_by_name(text: Text, field: str) -> None:
    request = text.request(max_tokens=2, sampling=SamplingParams(**{field: SAMPLING_VALUES[field]}))
    if field in capabilities(text).sampling:
        run = await text.run(request)
        assert run.finished is not None
        assert run.finished.usage.output_tokens == 2
    else:
        with pytest.raises(InvalidArgument) as error:
            await anext(text.engine.stream(request))
        assert error.value.reason == "FIELD_UNSUPPORTED"
        assert error.value.field == f"params.sampling.{field}"
    assert text.engine.active == 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
async def test_logprobs_are_real_or_refused(text: Text, temperature: float) -> None:
    caps = capabilities(text)
    sampling = SamplingParams(temperature=temperature, seed=3 if "seed" in caps.sampling else None)
    request = text.request(max_tokens=4, sampling=sampling, top_logprobs=2)
    if caps.logprobs and (temperature == 0.0 or caps.sampled_logprobs):
        run = await text.run(request)
        logprobs = [lp for delta in run.deltas for lp in delta.logprobs]
        assert [lp.token.token_id for lp in logprobs] == list(run.ids)
        for lp in logprobs:  # a real value for the emitted token, never a stand-in for an unknown one
            assert math.isfinite(lp.token.logprob)
            assert lp.token.logprob > -100.0  # what was sampled was likely; a floor like -9999 stands in for "unknown"
            assert lp.token.logprob <= 0.0
            assert len(lp.top) == 2
            if temperature == 0.0:  # greedy emits the most likely token
                assert lp.token.logprob >= lp.top[0].logprob - 1e-4
    else:
        with pytest.raises(InvalidArgument) as error:
            await anext(text.engine.stream(request))
        assert (error.value.reason, error.value.field) == ("FIELD_UNSUPPORTED", "params.top_logprobs")
    assert text.engine.active == 0


CONSTRAINTS = {
    ConstraintKind.JSON_SCHEMA: Constraint(
        ConstraintKind.JSON_SCHEMA,
        json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                    "additionalProperties": False}),
    ),
    ConstraintKind.REGEX: Constraint(ConstraintKind.REGEX, "[0-9]{3}"),
    ConstraintKind.GRAMMAR: Constraint(ConstraintKind.GRAMMAR, 'start: "yes" | "no"'),
    ConstraintKind.CHOICE: Constraint(ConstraintKind.CHOICE, choices=("red", "green", "blue")),
    ConstraintKind.JSON_OBJECT: Constraint(ConstraintKind.JSON_OBJECT),
}  # fmt: skip


CONSTRAINT_PROMPT = '{"id": 1}\n{"id": 2}\n'
"""A prompt a language model continues with a short object: any JSON object would do for json_object, and a greedy
model left to the case's prompt fills it with prose past 48 tokens (a prefix, LENGTH: honest, but not the point)."""


def accepted(constraint: Constraint, text: str) -> bool:
    """Whether `text` is a whole string `constraint` accepts (checked independently of llguidance)."""
    if constraint.kind is ConstraintKind.JSON_SCHEMA:
        return json.loads(text) in ({"ok": True}, {"ok": False})
    if constraint.kind is ConstraintKind.JSON_OBJECT:
        return isinstance(json.loads(text), dict)
    if constraint.kind is ConstraintKind.REGEX:
        return re.fullmatch("[0-9]{3}", text) is not None
    if constraint.kind is ConstraintKind.GRAMMAR:
        return text in ("yes", "no")
    return text in constraint.choices


@pytest.mark.parametrize("kind", list(ConstraintKind), ids=lambda kind: kind.value)
async def test_a_constraint_is_enforced_or_refused_by_kind(text: Text, kind: ConstraintKind) -> None:
    constraint = CONSTRAINTS[kind]
    request = dataclasses.replace(text.request(CONSTRAINT_PROMPT, max_tokens=48), constraint=constraint)
    if kind in capabilities(text).constraints:
        run = await text.run(request)
        assert run.finished is not None
        assert run.finished.reason is FinishReason.STOP, "these constraints end well within 48 tokens"
        assert accepted(constraint, run.text), run.text
    else:
        with pytest.raises(InvalidArgument) as error:
            await anext(text.engine.stream(request))
        assert (error.value.reason, error.value.field) == ("CONSTRAINT_UNSUPPORTED", f"params.{kind.value}")
    assert text.engine.active == 0


async def test_more_streams_than_slots_wait_in_admission_and_all_finish(text: Text) -> None:
    slots = text.engine.slots
    queue = 2
    admission = Admission(slots, max_queue=queue, retry_after_s=1.0)
    peak = 0
    release = asyncio.Event()

    async def one() -> TextRun:
        nonlocal peak
        async with admission.admit():
            run = TextRun()
            async for event in text.engine.stream(text.request(max_tokens=3)):
                peak = max(peak, text.engine.active)
                if isinstance(event, TokenDelta):
                    run.deltas.append(event)
                else:
                    run.finished = event
                await release.wait()  # the first `slots` streams hold their slots until the queue is checked
            return run

    tasks = [asyncio.create_task(one()) for _ in range(slots + queue)]
    await eventually(lambda: admission.queued == queue)
    with pytest.raises(ResourceExhausted):
        async with admission.admit():
            pass
    release.set()
    runs = await asyncio.gather(*tasks)
    assert all(r.finished is not None and r.finished.usage.output_tokens == len(r.ids) for r in runs)
    assert 0 < peak <= slots
    assert admission.running == admission.queued == text.engine.active == 0
