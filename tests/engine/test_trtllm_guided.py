"""Output constraints on the trtllm engine: TensorRT-LLM's guided decoding (llguidance backend), on its double.

The double constrains for real (`_double/guidance.py`: llguidance over its byte pieces), so what a guided stream emits
is checked here independently of llguidance: parsed, matched, compared.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from rillet.server.config import TrtllmGuidedDecoding
from rillet.server.engine.trtllm import TrtllmEngine, llm_kwargs
from rillet.server.engine.trtllm.api import guide, guided_decoding, import_api
from rillet.server.errors import ConfigurationError, InvalidArgument
from rillet.server.types import Constraint, ConstraintKind, FinishReason
from tests.conftest import eventually
from tests.doubles.trtllm import double, double_config, executor, request, run, running

GUIDED = {"guided_decoding_backend": TrtllmGuidedDecoding.LLGUIDANCE}
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 3}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


@pytest.fixture
def sim() -> Iterator[Any]:
    with double() as simulation:
        yield simulation


def test_each_kind_becomes_the_guided_decoding_params_field_tensorrt_llm_has_for_it() -> None:
    assert guide(Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "string"}')) == {"json": '{"type": "string"}'}
    assert guide(Constraint(ConstraintKind.JSON_OBJECT)) == {"json_object": True}
    assert guide(Constraint(ConstraintKind.REGEX, "a+")) == {"regex": "a+"}
    assert guide(Constraint(ConstraintKind.GRAMMAR, 'start: "x"')) == {"grammar": 'start: "x"'}
    assert guide(Constraint(ConstraintKind.CHOICE, choices=("a", 'say "b"'))) == {
        "grammar": 'start: "a" | "say \\"b\\""'
    }


def test_the_backend_is_a_typed_setting_extra_llm_args_may_not_set(sim: Any) -> None:
    api = import_api()
    assert llm_kwargs(double_config(), api)["guided_decoding_backend"] is None
    assert llm_kwargs(double_config(**GUIDED), api)["guided_decoding_backend"] == "llguidance"
    with pytest.raises(ConfigurationError, match="guided_decoding_backend"):
        TrtllmEngine(double_config(extra_llm_args={"guided_decoding_backend": "xgrammar"}))


def test_llguidance_missing_from_rillets_environment_stops_the_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_llguidance(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "llguidance":
            raise ImportError("No module named 'llguidance'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llguidance)
    assert guided_decoding(double_config()) is None  # no backend: llguidance is not needed
    with pytest.raises(ConfigurationError, match="llguidance package"):
        guided_decoding(double_config(**GUIDED))


async def test_without_a_backend_tensorrt_llm_drops_a_guide_so_the_engine_lists_no_kind_and_refuses(sim: Any) -> None:
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.sampling_params import GuidedDecodingParams

    with LLM(model="double") as llm:  # what 1.2.1 does with a guide and no backend: generates as if it were not there
        out = await llm.generate_async(
            [7], SamplingParams(max_tokens=3, guided_decoding=GuidedDecodingParams(regex="x"))
        )
        assert out.outputs[0].text != "xxx"
        assert len(out.outputs[0].token_ids) == 3
        assert llm._executor is not None
        assert llm._executor.worker.guided_sequences == 0
    async with running() as engine:
        caps = engine.models[0].capabilities
        assert caps is not None
        assert not caps.constraints
        for kind, constraint in CONSTRAINTS.items():
            with pytest.raises(InvalidArgument) as error:
                await anext(engine.stream(request(constraint=constraint)))
            assert (error.value.reason, error.value.field) == ("CONSTRAINT_UNSUPPORTED", f"params.{kind.value}")
        assert executor(engine).in_flight == 0


CONSTRAINTS = {
    ConstraintKind.JSON_SCHEMA: Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA)),
    ConstraintKind.REGEX: Constraint(ConstraintKind.REGEX, r"[0-9]{2}-[a-z]{3}"),
    ConstraintKind.GRAMMAR: Constraint(ConstraintKind.GRAMMAR, 'start: "id=" NUM ";"\nNUM: /[1-9][0-9]{0,2}/'),
    ConstraintKind.CHOICE: Constraint(ConstraintKind.CHOICE, choices=("zebra", "café 日本 🦩")),
    ConstraintKind.JSON_OBJECT: Constraint(ConstraintKind.JSON_OBJECT),
}


def accepted(constraint: Constraint, text: str) -> bool:
    """Whether `text` is a whole string the constraint accepts, checked without llguidance."""
    match constraint.kind:
        case ConstraintKind.JSON_SCHEMA:
            value = json.loads(text)
            return set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and value["n"] >= 3
        case ConstraintKind.JSON_OBJECT:
            return isinstance(json.loads(text), dict)
        case ConstraintKind.REGEX:
            return re.fullmatch(r"[0-9]{2}-[a-z]{3}", text) is not None
        case ConstraintKind.GRAMMAR:
            return re.fullmatch(r"id=[1-9][0-9]{0,2};", text) is not None
        case _:
            return text in constraint.choices


@pytest.mark.parametrize("kind", list(ConstraintKind), ids=lambda kind: kind.value)
async def test_with_llguidance_every_kind_is_enforced_by_tensorrt_llm(sim: Any, kind: ConstraintKind) -> None:
    async with running(double_config(**GUIDED)) as engine:
        caps = engine.models[0].capabilities
        assert caps is not None
        assert caps.constraints == frozenset(ConstraintKind)
        constraint = CONSTRAINTS[kind]
        deltas, finished = await run(engine, request("1, 2, 3, 4, 5, ", max_tokens=64, constraint=constraint))
        text = "".join(d.text for d in deltas)
        assert finished.reason is FinishReason.STOP, text  # the end token, once the matcher accepted
        assert accepted(constraint, text), text
        assert "\ufffd" not in text  # bytes of one character arrive in several tokens: never split across deltas
        assert finished.usage.output_tokens == sum(len(d.token_ids) for d in deltas)
        assert executor(engine).guided_sequences == 1  # the guide reached TensorRT-LLM's executor
        assert engine.active == 0


async def test_a_multibyte_choice_is_streamed_whole_characters_only(sim: Any) -> None:
    constraint = Constraint(ConstraintKind.CHOICE, choices=("café 日本 🦩",))
    async with running(double_config(**GUIDED)) as engine:
        deltas, finished = await run(engine, request(max_tokens=32, constraint=constraint))
        assert [d.text for d in deltas if d.text] == list("café 日本 🦩")  # one byte a token, one character a delta
        assert finished.reason is FinishReason.STOP


async def test_max_tokens_and_stop_strings_still_apply_to_a_constrained_output(sim: Any) -> None:
    schema = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
    async with running(double_config(**GUIDED)) as engine:
        deltas, finished = await run(engine, request(max_tokens=5, constraint=schema))
        assert finished.reason is FinishReason.LENGTH  # a prefix of an accepted output
        assert "".join(d.text for d in deltas) == '{"ok"'
        deltas, finished = await run(engine, request(max_tokens=64, constraint=schema, stop=(":",)))
        assert finished.reason is FinishReason.STOP_SEQUENCE
        assert "".join(d.text for d in deltas) == '{"ok" '
        assert engine.active == 0


@pytest.mark.parametrize(
    ("constraint", "reason"),
    [
        (Constraint(ConstraintKind.JSON_SCHEMA, "{not json"), "CONSTRAINT_INVALID"),
        (Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "objekt"}'), "CONSTRAINT_INVALID"),
        (Constraint(ConstraintKind.REGEX, "a(b"), "CONSTRAINT_INVALID"),
        (Constraint(ConstraintKind.GRAMMAR, "start: foo"), "CONSTRAINT_INVALID"),
    ],
)
async def test_a_bad_constraint_is_invalid_argument_before_submission_and_the_executor_lives(
    sim: Any, constraint: Constraint, reason: str
) -> None:
    async with running(double_config(**GUIDED)) as engine:
        with pytest.raises(InvalidArgument) as error:
            await anext(engine.stream(request(constraint=constraint)))
        assert (error.value.reason, error.value.field) == (reason, f"params.{constraint.kind.value}")
        worker = executor(engine)
        assert (worker.in_flight, worker.guided_sequences, worker.died) == (0, 0, None)
        assert engine.healthy()
        _, finished = await run(engine, request(max_tokens=8, constraint=CONSTRAINTS[ConstraintKind.REGEX]))
        assert finished.reason is FinishReason.STOP  # the next constrained request is served


async def test_a_bad_guide_that_reached_the_executor_would_take_the_worker_down(sim: Any) -> None:
    """Why the engine validates first: the matcher is built inside the executor's step (the double's worst case)."""
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.sampling_params import GuidedDecodingParams

    llm = LLM(model="double", guided_decoding_backend="llguidance")
    try:
        llm.generate_async([7], SamplingParams(max_tokens=3, guided_decoding=GuidedDecodingParams(regex="a(")))
        assert llm._executor is not None
        worker = llm._executor.worker
        await eventually(lambda: worker.died is not None)
        assert isinstance(worker.died, ValueError)
        assert "LLGuidance matcher error" in str(worker.died)
        with pytest.raises(ValueError, match="LLGuidance matcher error"):  # the next submit raises the queued error
            llm.generate_async([7], SamplingParams(max_tokens=1))
    finally:
        with contextlib.suppress(ValueError):
            llm.shutdown()


async def test_the_same_constraint_is_validated_once(sim: Any) -> None:
    constraint = CONSTRAINTS[ConstraintKind.JSON_SCHEMA]
    async with running(double_config(**GUIDED)) as engine:
        for _ in range(3):
            await run(engine, request(max_tokens=64, constraint=constraint))
        checker = engine._checker
        assert checker is not None
        assert checker.validated == 1
