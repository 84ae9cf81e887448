"""Output constraints on the llamacpp engine, on the real Gemma 3 270M: each kind enforced, beside free streams.

Outputs are checked independently of llguidance (jsonschema, Python's re, membership). Small token counts; prompts
are few-shot so the base model closes what it opens within them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from rillet.bench.constraints import corpus
from rillet.bench.constraints.corpus import valid
from rillet.server.config import LlamaCppConfig
from rillet.server.engine import llamacpp as llamacpp_module
from rillet.server.engine.llamacpp import LlamaCppEngine
from rillet.server.engine.llamacpp import guide as guide_module
from rillet.server.errors import Internal, InvalidArgument
from rillet.server.reasons import Reason
from rillet.server.types import (
    Constraint,
    ConstraintKind,
    EngineEvent,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TokenDelta,
)
from tests.conftest import eventually
from tests.contract.engines import started

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

CONFIG = LlamaCppConfig(slots=4, context_length=1024, n_threads=1)
SMALL = LlamaCppConfig(slots=4, context_length=256, n_threads=1)
"""A cache smaller than its slots' max_tokens together: the newest sequence is preempted and resumed."""
GREEDY = SamplingParams(temperature=0.0)
COUNTING = ("1, 2, 3, 4, 5, 6, 7, 8,", "10, 20, 30, 40, 50,", "2, 4, 6, 8, 10, 12,")
"""Prompts the base model continues with numbers for hundreds of tokens."""
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user", "guest"]},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age", "role", "email"],
    "additionalProperties": False,
}
PERSON_PROMPT = (
    'Users as JSON:\n{"name": "Ann Lee", "age": 31, "role": "admin", "email": "ann@example.com"}\n'
    '{"name": "Bo Chen", "age": 45, "role": "guest", "email": "bo@example.org"}\n'
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    async with started(LlamaCppEngine(CONFIG)) as engine:
        yield engine


def request(
    prompt: Prompt,
    constraint: Constraint | None,
    max_tokens: int = 48,
    *,
    request_id: str = "c",
    sampling: SamplingParams = GREEDY,
    stop: tuple[str, ...] = (),
    top_logprobs: int | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        request_id, "gemma-3-270m", prompt, max_tokens, sampling, stop, top_logprobs, constraint=constraint
    )


async def run(stream: AsyncIterator[EngineEvent]) -> tuple[str, list[TokenDelta], EngineFinished]:
    deltas: list[TokenDelta] = []
    finished: EngineFinished | None = None
    async for event in stream:
        assert finished is None, "nothing may follow EngineFinished"
        if isinstance(event, TokenDelta):
            deltas.append(event)
        else:
            assert isinstance(event, EngineFinished)
            finished = event
    assert finished is not None
    assert sum(len(d.token_ids) for d in deltas) == finished.usage.output_tokens
    return "".join(d.text for d in deltas), deltas, finished


def schema(document: dict[str, Any]) -> Constraint:
    return Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(document))


# -- each kind, enforced ----------------------------------------------------------------------------------------------


async def test_the_model_lists_every_kind(engine: LlamaCppEngine) -> None:
    (info,) = engine.models
    assert info.capabilities is not None
    assert info.capabilities.constraints == frozenset(ConstraintKind)


async def test_a_json_schema_output_validates(engine: LlamaCppEngine) -> None:
    text, _, finished = await run(engine.stream(request(PERSON_PROMPT, schema(PERSON), 64)))
    assert finished.reason is FinishReason.STOP
    assert valid(PERSON, text), text


async def test_a_regex_output_fullmatches(engine: LlamaCppEngine) -> None:
    pattern = r"[A-Z]{3}-[0-9]{4}"
    prompt = "Ticket codes: ABC-1234, XYZ-9876, QRS-"
    text, _, finished = await run(engine.stream(request(prompt, Constraint(ConstraintKind.REGEX, pattern))))
    assert finished.reason is FinishReason.STOP
    assert re.fullmatch(pattern, text), text


async def test_a_choice_output_is_a_member(engine: LlamaCppEngine) -> None:
    choices = ("positive", "negative", "neutral")
    prompt = "Review: I loved every minute of it.\nSentiment:"
    text, _, finished = await run(engine.stream(request(prompt, Constraint(ConstraintKind.CHOICE, choices=choices))))
    assert finished.reason is FinishReason.STOP
    assert text in choices


async def test_a_grammar_output_is_a_sentence_of_it(engine: LlamaCppEngine) -> None:
    lark = 'start: "SELECT " column ("," column)* " FROM " table\ncolumn: /[a-z_]{1,12}/\ntable: /[a-z_]{1,12}/'
    prompt = "SQL for the names of all users:\n"
    text, _, finished = await run(engine.stream(request(prompt, Constraint(ConstraintKind.GRAMMAR, lark))))
    assert finished.reason is FinishReason.STOP
    assert re.fullmatch(r"SELECT [a-z_]{1,12}(,[a-z_]{1,12})* FROM [a-z_]{1,12}", text), text


async def test_a_json_object_output_is_an_object(engine: LlamaCppEngine) -> None:
    prompt = '{"id": 1, "ok": true}\n{"id": 2, "ok": false}\n'
    text, _, finished = await run(engine.stream(request(prompt, Constraint(ConstraintKind.JSON_OBJECT))))
    assert finished.reason is FinishReason.STOP
    assert isinstance(json.loads(text), dict), text


async def test_max_tokens_ends_with_length_and_a_prefix(engine: LlamaCppEngine) -> None:
    text, _, finished = await run(engine.stream(request(PERSON_PROMPT, schema(PERSON), 4)))
    assert finished.reason is FinishReason.LENGTH
    assert finished.usage.output_tokens == 4
    assert text.startswith('{"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_a_stop_string_still_ends_a_constrained_output(engine: LlamaCppEngine) -> None:
    text, _, finished = await run(engine.stream(request(PERSON_PROMPT, schema(PERSON), 64, stop=('"age"',))))
    assert finished.reason is FinishReason.STOP_SEQUENCE
    assert text.startswith('{"name": ')
    assert '"age"' not in text


async def test_sampled_outputs_are_constrained_too(engine: LlamaCppEngine) -> None:
    pattern = r"[0-9]{2}:[0-9]{2}"
    sampling = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=7)
    for index in range(3):
        prompt = f"Meeting {index} starts at"
        constraint = Constraint(ConstraintKind.REGEX, pattern)
        text, _, finished = await run(engine.stream(request(prompt, constraint, 12, sampling=sampling)))
        assert finished.reason is FinishReason.STOP
        assert re.fullmatch(pattern, text), text


async def test_logprobs_are_the_models_not_the_masks(engine: LlamaCppEngine) -> None:
    constraint = Constraint(ConstraintKind.CHOICE, choices=("red", "green", "blue"))
    _, deltas, _ = await run(engine.stream(request(COUNTING[0], constraint, top_logprobs=2)))
    first = deltas[0].logprobs[0]
    # The model continues the count: its best token is a number the choice forbids, and it is listed as it is
    assert first.top[0].token_id != first.token.token_id
    assert -100.0 < first.token.logprob < first.top[0].logprob


# -- compilation: before submission, cached, errors ------------------------------------------------------------------


async def test_a_repeated_schema_is_compiled_once(engine: LlamaCppEngine) -> None:
    assert engine.compiler is not None
    document = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    before = engine.compiler.compiled
    for text in (json.dumps(document), json.dumps(document, indent=4)):  # the same schema spelled differently
        _, _, finished = await run(engine.stream(request('{"n": 1}\n{"n": 2}\n', schema_text(text), 12)))
        assert finished.reason is FinishReason.STOP
    assert engine.compiler.compiled == before + 1


def schema_text(text: str) -> Constraint:
    return Constraint(ConstraintKind.JSON_SCHEMA, text)


async def test_a_bad_constraint_fails_before_any_output(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidArgument) as error:
        await anext(engine.stream(request("x", Constraint(ConstraintKind.REGEX, "a(b"))))
    assert (error.value.reason, error.value.field) == ("CONSTRAINT_INVALID", "params.regex")
    with pytest.raises(InvalidArgument) as error:
        await anext(engine.stream(request("x", schema({"type": "array", "uniqueItems": True}))))
    assert error.value.reason == "CONSTRAINT_INVALID"
    assert "uniqueItems" in error.value.message
    assert engine.active == 0


async def test_a_failing_matcher_ends_its_request_alone(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A matcher that fails mid-output (a bug, or a parser limit llguidance hits) fails that request only."""

    def failing(self: guide_module.Guide, token: int) -> bool:
        raise Internal("the output constraint failed: step fuel exhausted", reason=Reason.ENGINE_REQUEST_FAILED)

    fails = Constraint(ConstraintKind.REGEX, "[a-z ]{1,200}")
    healthy = asyncio.create_task(run(engine.stream(request(COUNTING[0], None, 24, request_id="free"))))
    await eventually(lambda: engine.active == 1)
    monkeypatch.setattr(guide_module.Guide, "consume", failing)
    with pytest.raises(Internal) as error:
        await run(engine.stream(request("Words:", fails, request_id="failing")))
    assert error.value.reason == "ENGINE_REQUEST_FAILED"
    assert "step fuel exhausted" in error.value.message
    _, _, finished = await healthy
    assert finished.reason is FinishReason.LENGTH
    await eventually(lambda: engine.active == 0)


# -- in the batch: beside free streams, cancelled, preempted, sharing a prefix ----------------------------------------


async def test_constrained_and_free_streams_share_the_batch(engine: LlamaCppEngine) -> None:
    letters = Constraint(ConstraintKind.REGEX, "[a-z]+( [a-z]+){0,30}")
    sizes: list[int] = []
    engine.step_reporter.listen(sizes.append)  # the module's engine: later tests' steps are recorded too, unread
    runs = await asyncio.gather(
        run(engine.stream(request(COUNTING[0], letters, 24, request_id="c0"))),
        run(engine.stream(request(COUNTING[1], None, 24, request_id="f0"))),
        run(engine.stream(request(COUNTING[2], letters, 24, request_id="c1"))),
        run(engine.stream(request(COUNTING[0], None, 24, request_id="f1"))),
    )
    assert max(sizes) == 4  # all four advanced in one step
    for index, (text, _, finished) in enumerate(runs):
        if index % 2 == 0:  # constrained: letters only, whatever the numbers the prompt asks for
            assert finished.reason in (FinishReason.STOP, FinishReason.LENGTH)
            assert re.fullmatch(r"[a-z]+( [a-z]+)* ?", text), text
        else:  # free: the count goes on, no mask of a neighbour's leaked onto its row
            assert finished.reason is FinishReason.LENGTH
            assert re.search(r"[0-9]", text), text
    await eventually(lambda: engine.active == 0)


async def test_cancelling_a_constrained_stream_frees_its_slot(engine: LlamaCppEngine) -> None:
    endless = Constraint(ConstraintKind.REGEX, "[a-z ]{1,400}")
    stream = engine.stream(request("Words:", endless, 300))
    assert isinstance(await anext(stream), TokenDelta)
    assert engine.active == 1
    await stream.aclose()
    await eventually(lambda: engine.active == 0)
    text, _, finished = await run(engine.stream(request(PERSON_PROMPT, schema(PERSON), 64)))
    assert finished.reason is FinishReason.STOP
    assert valid(PERSON, text)


async def test_a_constrained_prompt_shares_a_cached_prefix(engine: LlamaCppEngine) -> None:
    first = await run(engine.stream(request(PERSON_PROMPT, schema(PERSON), 64)))
    second = await run(engine.stream(request(PERSON_PROMPT, schema(PERSON), 64)))
    assert 0 < second[2].usage.cached_input_tokens < second[2].usage.input_tokens
    assert second[0] == first[0]  # greedy, alone, the same prompt: the same output
    assert valid(PERSON, second[0])


async def test_a_preempted_constrained_stream_resumes_where_its_matcher_was(caplog: pytest.LogCaptureFixture) -> None:
    """Three constrained streams outgrow the cache: the newest gives up its cells and re-prefills what it emitted.

    The constraint starts with a marker it allows once: a matcher that restarted on resumption would write it again.
    """
    caplog.set_level(logging.INFO, logger=llamacpp_module.__name__)
    pattern = r"#( [0-9]{1,3},){1,100}"
    prefix = re.compile(r"#( [0-9]{1,3},)*( [0-9]{0,3})?")  # what an output cut by max_tokens may be
    constraint = Constraint(ConstraintKind.REGEX, pattern)
    async with started(LlamaCppEngine(SMALL)) as small:
        streams = []
        for index, prompt in enumerate(COUNTING):  # 3 x (prompt + 80) > 256 cells
            stream = small.stream(request(prompt, constraint, 80, request_id=f"{index}"))
            streams.append(asyncio.create_task(run(stream)))
            await eventually(lambda: small.active == len(streams))
        for text, _, finished in await asyncio.gather(*streams):
            assert finished.usage.output_tokens <= 80
            if finished.reason is FinishReason.STOP:
                assert re.fullmatch(pattern, text), text
            else:
                assert finished.reason is FinishReason.LENGTH
                assert prefix.fullmatch(text), text
            assert text.count("#") == 1
    assert "the KV cache is full" in caplog.text


# -- without llguidance ----------------------------------------------------------------------------------------------


async def test_without_llguidance_the_engine_lists_no_constraint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llguidance" else real(name, *a))
    (info,) = LlamaCppEngine(CONFIG).models  # not started: no model is loaded
    assert info.capabilities is not None
    assert info.capabilities.constraints == frozenset()


# -- the validity corpus (a sample; bench/bench_constraints.py runs all of it) ---------------------------------------

SAMPLE = (
    "person", "quote", "tool_call", "http_response", "generated_002", "generated_007", "generated_017", "generated_032",
)  # fmt: skip
"""Schemas of the corpus the base model fills within 48 tokens from their prompts (realistic and generated)."""


async def test_every_finished_output_of_a_corpus_sample_validates(engine: LlamaCppEngine) -> None:
    entries = {entry.name: entry for entry in corpus.load()}
    sample = [entries[name] for name in SAMPLE]
    outputs = await asyncio.gather(
        *(run(engine.stream(request(e.prompt, schema(e.schema), 48, request_id=e.name))) for e in sample)
    )
    finished = [
        (entry, text) for entry, (text, _, end) in zip(sample, outputs, strict=True) if end.reason is FinishReason.STOP
    ]
    assert len(finished) >= len(sample) // 2, "most of the sample finishes within its tokens"
    assert [entry.name for entry, text in finished if not valid(entry.schema, text)] == []
