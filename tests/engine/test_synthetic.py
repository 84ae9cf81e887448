"""The synthetic TEST engine steps like a batched engine: one token to every running request per step."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import AsyncIterator
from contextlib import aclosing

import jsonschema
import pytest

from rillet.server.config import SyntheticConfig
from rillet.server.engine import synthetic
from rillet.server.engine.synthetic import END_TOKEN, VOCABULARY, SyntheticEngine, synthetic_text
from rillet.server.errors import InvalidArgument, Unavailable
from rillet.server.types import (
    Constraint,
    ConstraintKind,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    TokenDelta,
)


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
    assert ended.value.reason == "SHUTTING_DOWN"
    assert not engine.healthy()
    assert engine.active == 0


# -- output constraints: enforced for real, through llguidance --------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
        "address": {"$ref": "#/$defs/address"},
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
    "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}


async def constrained(
    engine: SyntheticEngine, constraint: Constraint, max_tokens: int = 200, stop: tuple[str, ...] = ()
) -> tuple[list[TokenDelta], EngineFinished]:
    req = GenerationRequest("c", "synthetic-test", "the river", max_tokens, stop=stop, constraint=constraint)
    deltas: list[TokenDelta] = []
    async with aclosing(engine.stream(req)) as events:
        async for event in events:
            if isinstance(event, EngineFinished):
                return deltas, event
            deltas.append(event)
    raise AssertionError("no EngineFinished")


@pytest.fixture
async def engine() -> AsyncIterator[SyntheticEngine]:
    engine = SyntheticEngine(SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0, slots=8))
    await engine.start()
    yield engine
    await engine.aclose()


async def test_a_schema_with_free_strings_nesting_enums_and_refs_completes_and_validates(
    engine: SyntheticEngine,
) -> None:
    deltas, finished = await constrained(engine, Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(PERSON)))
    text = "".join(d.text for d in deltas)
    assert finished.reason is FinishReason.STOP
    jsonschema.validate(json.loads(text), PERSON)
    assert any(word in text for word in VOCABULARY)  # its own words fill the free strings, then the string closes
    assert finished.usage.output_tokens == sum(len(d.token_ids) for d in deltas)
    assert END_TOKEN not in [t for d in deltas for t in d.token_ids]  # the end token is neither sent nor counted
    assert engine.active == 0


async def test_the_same_request_gives_the_same_constrained_output_and_compiles_once(engine: SyntheticEngine) -> None:
    constraint = Constraint(ConstraintKind.REGEX, r"[a-z]+ [0-9]{2}")
    outputs = {"".join(d.text for d in (await constrained(engine, constraint))[0]) for _ in range(3)}
    assert len(outputs) == 1
    assert re.fullmatch(r"[a-z]+ [0-9]{2}", outputs.pop())
    assert engine.compiler.compiled == 1


async def test_multibyte_characters_spelled_in_bytes_are_never_split(engine: SyntheticEngine) -> None:
    constraint = Constraint(ConstraintKind.CHOICE, choices=("añ日🦩b",))
    deltas, finished = await constrained(engine, constraint)
    assert [d.text for d in deltas if d.text] == list("añ日🦩b")  # one byte a token, whole characters a delta
    assert "".join(d.text for d in deltas) == "añ日🦩b"
    assert finished.reason is FinishReason.STOP


async def test_max_tokens_leaves_a_prefix_and_stop_strings_still_apply(engine: SyntheticEngine) -> None:
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(PERSON))
    whole = "".join(d.text for d in (await constrained(engine, schema))[0])
    deltas, finished = await constrained(engine, schema, max_tokens=6)
    assert finished.reason is FinishReason.LENGTH
    assert whole.startswith("".join(d.text for d in deltas))
    deltas, finished = await constrained(engine, schema, stop=('"age"',))
    assert finished.reason is FinishReason.STOP_SEQUENCE
    assert whole.startswith("".join(d.text for d in deltas) + '"age"')


@pytest.mark.parametrize(
    "constraint",
    [Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "objekt"}'), Constraint(ConstraintKind.GRAMMAR, "start: x")],
)
async def test_a_bad_constraint_fails_before_any_output(engine: SyntheticEngine, constraint: Constraint) -> None:
    with pytest.raises(InvalidArgument) as error:
        await constrained(engine, constraint)
    assert error.value.reason == "CONSTRAINT_INVALID"
    assert engine.active == 0


def test_without_llguidance_the_engine_lists_no_constraint_and_refuses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert synthetic.capabilities().constraints == frozenset(ConstraintKind)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llguidance" else real(name, *a))
    caps = SyntheticEngine(SyntheticConfig()).models[0].capabilities
    assert caps is not None
    assert caps.constraints == frozenset()
