"""Output constraints (engine/constraints.py): grammars of every kind, errors as INVALID_ARGUMENT, the compile cache."""

from __future__ import annotations

import asyncio
import json
import time
from typing import ClassVar

import pytest
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from rillet.server.engine.constraints import Checker, Compiler, check, choice_lark, grammar
from rillet.server.errors import InvalidArgument
from rillet.server.types import Constraint, ConstraintKind

EOS = 256


class _Bytes:
    """A byte-level tokenizer: token i is byte i, token 256 ends the text."""

    eos_token_id = EOS
    bos_token_id = None
    tokens: ClassVar = [bytes([i]) for i in range(256)] + [b"\xff<eos>"]
    special_token_ids: ClassVar = [EOS]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


def byte_tokenizer() -> LLTokenizer:
    return LLTokenizer(TokenizerWrapper(_Bytes()))


def accepts(matcher: LLMatcher, text: str) -> bool:
    """Whether `matcher` takes `text` and may stop after it (consuming it)."""
    return all(matcher.consume_token(b) for b in text.encode()) and matcher.is_accepting()


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize(
    ("constraint", "good", "bad"),
    [
        (Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA)), '{"name": "Ada", "age": 36}', '{"name": "Ada"}'),
        (Constraint(ConstraintKind.JSON_OBJECT), '{"anything": [1, 2]}', "[1, 2]"),
        (Constraint(ConstraintKind.REGEX, r"\d{3}-[A-Z]{2}"), "123-AB", "12-AB"),
        (Constraint(ConstraintKind.GRAMMAR, 'start: "yes" | "no" NUM\nNUM: /[0-9]+/'), "no42", "maybe"),
        (
            Constraint(ConstraintKind.CHOICE, choices=('say "hi"', "back\\slash", "café 日本 🦩", "a|b\n")),
            "café 日本 🦩",
            "a",
        ),
    ],
)
async def test_each_kind_accepts_what_it_should_and_nothing_else(constraint: Constraint, good: str, bad: str) -> None:
    compiler = Compiler(byte_tokenizer)
    assert accepts(await compiler.matcher(constraint), good)
    assert not accepts(await compiler.matcher(constraint), bad)


@pytest.mark.parametrize(
    ("text", "taken"),
    [
        ('{"name":"Ada","age":36}', True),
        ('{ "name" : "Ada", "age": 36 }', True),
        ('{\n  "name": "Ada",\n\n    "age": 36\n}', True),  # pretty-printed: line breaks and indentation
        ('{"name": "Ada", "age":' + " " * 2 + "36}", False),  # one space at most on a line
        ('{"name": "Ada",\n\n\n  "age": 36}', False),  # two line breaks at most
        ('{"name": "Ada",\n' + " " * 21 + '"age": 36}', False),  # an indentation of 20 at most
    ],
)
async def test_json_whitespace_is_bounded_so_a_model_cannot_fill_its_tokens_with_it(text: str, taken: bool) -> None:
    for constraint in (
        Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA)),
        Constraint(ConstraintKind.JSON_OBJECT),
    ):
        assert accepts(await Compiler(byte_tokenizer).matcher(constraint), text) is taken


async def test_a_schemas_own_x_guidance_options_override_the_bounded_whitespace() -> None:
    flexible = {**SCHEMA, "x-guidance": {"whitespace_flexible": True, "whitespace_pattern": None}}
    matcher = await Compiler(byte_tokenizer).matcher(Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(flexible)))
    assert accepts(matcher, '{"name": "Ada", "age":' + " " * 30 + "36}")


async def test_every_choice_is_matched_exactly_including_quotes_backslashes_and_newlines() -> None:
    choices = ('say "hi"', "back\\slash", "café 日本 🦩", "a|b\n", "/x/")
    compiler = Compiler(byte_tokenizer)
    for option in choices:
        assert accepts(await compiler.matcher(Constraint(ConstraintKind.CHOICE, choices=choices)), option)


@pytest.mark.parametrize(
    ("constraint", "reason", "says"),
    [
        (Constraint(ConstraintKind.JSON_SCHEMA, "{not json"), "CONSTRAINT_INVALID", "not JSON"),
        (Constraint(ConstraintKind.JSON_SCHEMA, "[1]"), "CONSTRAINT_INVALID", "JSON object"),
        (Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "objekt"}'), "CONSTRAINT_INVALID", "objekt"),
        (Constraint(ConstraintKind.JSON_SCHEMA, '{"not": {"type": "null"}}'), "CONSTRAINT_INVALID", "not"),
        (Constraint(ConstraintKind.REGEX, "a(b"), "CONSTRAINT_INVALID", "unclosed group"),
        (Constraint(ConstraintKind.REGEX, "a(?=b)"), "CONSTRAINT_INVALID", "look-around"),
        (Constraint(ConstraintKind.GRAMMAR, "start: foo"), "CONSTRAINT_INVALID", "unknown name"),
    ],
)
async def test_a_bad_constraint_is_invalid_argument_saying_where(
    constraint: Constraint, reason: str, says: str
) -> None:
    with pytest.raises(InvalidArgument) as checked:
        check(constraint)
    with pytest.raises(InvalidArgument) as compiled:
        await Compiler(byte_tokenizer).matcher(constraint)
    for error in (checked.value, compiled.value):
        assert (error.reason, error.field) == (reason, f"params.{constraint.kind.value}")
        assert says in error.message


async def test_the_same_constraint_compiles_once_and_each_request_gets_its_own_matcher() -> None:
    compiler = Compiler(byte_tokenizer, cache_size=2)
    regex = Constraint(ConstraintKind.REGEX, "[ab]+c")
    first, second = await compiler.matcher(regex), await compiler.matcher(regex)
    assert compiler.compiled == 1
    assert accepts(first, "abc")
    assert accepts(second, "bbac")  # untouched by what the first one consumed
    await compiler.matcher(Constraint(ConstraintKind.REGEX, "x"))
    await compiler.matcher(Constraint(ConstraintKind.REGEX, "y"))  # past cache_size: "[ab]+c" goes
    await compiler.matcher(regex)
    assert compiler.compiled == 4


async def test_a_compilation_past_its_time_bound_is_too_complex_and_the_loop_stays_free() -> None:
    def slow_tokenizer() -> LLTokenizer:
        time.sleep(0.5)
        return byte_tokenizer()

    compiler = Compiler(slow_tokenizer, timeout_s=0.05)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    with pytest.raises(InvalidArgument) as error:
        await compiler.matcher(Constraint(ConstraintKind.REGEX, "a"))
    ticker.cancel()
    assert error.value.reason == "CONSTRAINT_TOO_COMPLEX"
    assert ticks >= 2  # the event loop ran while the compilation did


def test_grammar_text_is_a_pure_function_of_the_constraint() -> None:
    constraint = Constraint(ConstraintKind.CHOICE, choices=("a", "b"))
    assert grammar(constraint) == grammar(Constraint(ConstraintKind.CHOICE, choices=("a", "b")))
    assert grammar(constraint) != grammar(Constraint(ConstraintKind.CHOICE, choices=("b", "a")))


async def test_a_checker_validates_off_the_loop_once_per_grammar_and_every_time_a_bad_one() -> None:
    checker = Checker(cache_size=2)
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    await checker.check(schema)
    await checker.check(schema)
    assert checker.validated == 1
    bad = Constraint(ConstraintKind.REGEX, "a(b")
    for _ in range(2):
        with pytest.raises(InvalidArgument) as error:
            await checker.check(bad)
        assert error.value.reason == "CONSTRAINT_INVALID"
    assert checker.validated == 3  # a bad one is never remembered as good
    await checker.check(Constraint(ConstraintKind.REGEX, "x"))
    await checker.check(Constraint(ConstraintKind.REGEX, "y"))  # past cache_size: the schema goes
    await checker.check(schema)
    assert checker.validated == 6


def test_a_choice_is_one_lark_rule_of_its_strings() -> None:
    assert choice_lark(["a", 'say "hi"', "back\\slash"]) == 'start: "a" | "say \\"hi\\"" | "back\\\\slash"'
