"""Converters: unset optional fields become None, errors carry ErrorInfo/RetryInfo the SDK can read back."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2

from rillet.client import ResourceExhaustedError
from rillet.client._errors import error_from_status
from rillet.server.config import LimitsConfig
from rillet.server.errors import InvalidArgument, ResourceExhausted
from rillet.server.transport import convert
from rillet.server.types import (
    AppendText,
    Cancel,
    ChatMessage,
    Command,
    Constraint,
    ConstraintKind,
    GenerateSpec,
    Malformed,
    Start,
    Timings,
    TraceContext,
)
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2

LIMITS = LimitsConfig()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"json_schema": "{}"}, Constraint(ConstraintKind.JSON_SCHEMA, "{}")),
        ({"regex": "a+"}, Constraint(ConstraintKind.REGEX, "a+")),
        ({"grammar": 'start: "x"'}, Constraint(ConstraintKind.GRAMMAR, 'start: "x"')),
        ({"choice": generation_pb2.Choice(options=["a", "b"])}, Constraint(ConstraintKind.CHOICE, choices=("a", "b"))),
        ({"json_object": generation_pb2.JsonObject()}, Constraint(ConstraintKind.JSON_OBJECT)),
        ({"regex": ""}, Constraint(ConstraintKind.REGEX, "")),  # set but empty: validation refuses it
    ],
)
def test_the_constraint_oneof_becomes_one_constraint(params: dict[str, Any], expected: Constraint | None) -> None:
    assert convert.generate_spec(generation_pb2.GenerateParams(text="hi", **params), LIMITS).constraint == expected


def test_a_choice_is_cut_one_past_its_limit() -> None:
    params = generation_pb2.GenerateParams(text="hi", choice=generation_pb2.Choice(options=["o"] * 1000))
    constraint = convert.generate_spec(params, LIMITS).constraint
    assert constraint is not None
    assert len(constraint.choices) == LIMITS.max_choices + 1


def test_unset_fields_become_none_and_set_zeroes_survive() -> None:
    spec = convert.generate_spec(generation_pb2.GenerateParams(text="hi"), LIMITS)
    assert spec == GenerateSpec(prompt="hi")
    params = generation_pb2.GenerateParams(
        token_ids=generation_pb2.TokenIds(ids=[1, 2]),
        max_tokens=0,
        sampling=generation_pb2.SamplingParams(temperature=0.0, seed=0),
    )
    spec = convert.generate_spec(params, LIMITS)
    assert spec.prompt == (1, 2)
    assert spec.max_tokens == 0
    assert spec.temperature == 0.0
    assert spec.seed == 0
    assert spec.top_p is None


def test_chat_prompt_and_commands() -> None:
    chat = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="hi")])
    message = inference_service_pb2.SessionRequest(
        request_id="r",
        start_generate=inference_service_pb2.StartGenerate(params=generation_pb2.GenerateParams(chat=chat)),
    )
    command = convert.session_command(message, LIMITS)
    assert isinstance(command, Start)
    assert isinstance(command.spec, GenerateSpec)
    assert command.spec.prompt == (ChatMessage("user", "hi"),)
    assert command.timeout_s is None
    append = inference_service_pb2.SessionRequest(
        request_id="r", append_text=inference_service_pb2.AppendText(text="x")
    )
    assert convert.session_command(append, LIMITS) == AppendText("r", "x")
    malformed = convert.session_command(inference_service_pb2.SessionRequest(request_id="r"), LIMITS)
    assert isinstance(malformed, Malformed)
    assert malformed.error.reason == "MISSING_KIND"


def test_status_round_trips_into_sdk_errors() -> None:
    error = error_from_status(
        convert.status(ResourceExhausted("busy", retry_after=2.5, metadata={"slots": "8"})), request_id="r1"
    )
    assert isinstance(error, ResourceExhaustedError)
    assert (error.reason, error.retry_after, error.metadata, error.request_id) == (
        "QUEUE_FULL",
        2.5,
        {"slots": "8"},
        "r1",
    )
    invalid = convert.status(InvalidArgument("bad", field="params.max_tokens", reason="MAX_TOKENS_OUT_OF_RANGE"))
    assert invalid.code == 3
    assert error_from_status(invalid).metadata == {"field": "params.max_tokens"}


def test_undecodable_bytes_raise_invalid_argument_naming_the_cause() -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.parse(b"\x0a\x02\xc3\x28", inference_service_pb2.SessionRequest)
    assert caught.value.reason == "UNDECODABLE_MESSAGE"
    assert caught.value.message == "the message is not a valid rillet.v1.SessionRequest: String field had bad UTF-8"


def test_a_long_request_id_becomes_malformed_under_a_clipped_id() -> None:
    for kind in ("cancel", "end_input", "append_text", "start_generate"):
        message = inference_service_pb2.SessionRequest(request_id="x" * 10_000)
        getattr(message, kind).SetInParent()
        command = convert.session_command(message, LIMITS)
        assert isinstance(command, Malformed)
        assert command.request_id == "x" * 64 + "…"
        assert command.error.reason == "REQUEST_ID_TOO_LONG"
    at_limit = inference_service_pb2.SessionRequest(request_id="x" * 128, cancel=inference_service_pb2.Cancel())
    assert convert.session_command(at_limit, LIMITS) == Cancel("x" * 128)


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (315_576_000_000, 999_999_999, True),
        (-315_576_000_000, -999_999_999, True),
        (0, 0, True),
        (315_576_000_001, 0, False),
        (90_000_000_000_000, 0, False),  # overflowed timedelta: OverflowError ended the whole session
        (1, -1, False),
        (0, 1_000_000_000, False),
    ],
)
def test_durations_outside_their_documented_rules_are_invalid(seconds: int, nanos: int, valid: bool) -> None:
    timeout = duration_pb2.Duration(seconds=seconds, nanos=nanos)
    message = inference_service_pb2.SessionRequest(
        request_id="r",
        start_synthesize=inference_service_pb2.StartSynthesize(
            params=speech_pb2.SynthesizeParams(max_chunk_duration=timeout), timeout=timeout
        ),
    )
    command = convert.session_command(message, LIMITS)
    if valid:
        assert isinstance(command, Start)
        assert command.timeout_s == pytest.approx(seconds + nanos / 1e9)
    else:
        assert isinstance(command, Malformed)
        assert (command.request_id, command.error.reason) == ("r", "INVALID_DURATION")


def test_repeated_fields_keep_one_item_past_their_limit() -> None:
    limits = LimitsConfig(max_stop_strings=2, max_chat_messages=3, max_prompt_token_ids=4)
    stops = convert.generate_spec(generation_pb2.GenerateParams(text="x", stop=["s"] * 1000), limits)
    assert stops.stop == ("s",) * 3
    ids = convert.generate_spec(
        generation_pb2.GenerateParams(token_ids=generation_pb2.TokenIds(ids=[1] * 1000)), limits
    )
    assert ids.prompt == (1,) * 5
    chat = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="u", content="c")] * 1000)
    assert (
        convert.generate_spec(generation_pb2.GenerateParams(chat=chat), limits).prompt == (ChatMessage("u", "c"),) * 4
    )


def test_an_oversized_trace_context_is_ignored_as_w3c_asks() -> None:
    def traced(traceparent: str, tracestate: str = "") -> Command:
        trace = common_pb2.TraceContext(traceparent=traceparent, tracestate=tracestate)
        start = inference_service_pb2.StartGenerate(params=generation_pb2.GenerateParams(text="x"), trace_context=trace)
        return convert.session_command(
            inference_service_pb2.SessionRequest(request_id="r", start_generate=start), LIMITS
        )

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ok = traced(parent, "k=v")
    assert isinstance(ok, Start)
    assert ok.trace == TraceContext(parent, "k=v")
    for command in (traced("0" * 1000), traced(parent, "k=" + "v" * 1000)):
        assert isinstance(command, Start)
        assert command.trace is None


@pytest.mark.parametrize("seconds", [0.0, 1.5, -1.5, 4e-7, -4e-7, 2.000000001, -2.000000001, -3.0, 12345.678901234])
def test_durations_are_normalized_as_protobuf_does(seconds: float) -> None:
    expected = duration_pb2.Duration()
    expected.FromNanoseconds(round(seconds * 1e9))  # seconds and nanos share the sign; |nanos| < 1e9
    got = convert.duration(seconds)
    assert (got.seconds, got.nanos) == (expected.seconds, expected.nanos)


def test_timings_leave_unknown_durations_unset() -> None:
    message = convert._timings(Timings(queue=0.1, prefill=None, time_to_first_output=None, total=0.2))
    assert not message.HasField("prefill_duration")
    assert not message.HasField("time_to_first_output")
    assert message.total_duration.ToNanoseconds() == 200_000_000
