"""Converters: unset optional fields become None, errors carry ErrorInfo/RetryInfo the SDK can read back."""

from __future__ import annotations

from rillet.client import ResourceExhaustedError
from rillet.client._errors import error_from_status
from rillet.server.config import LimitsConfig
from rillet.server.errors import InvalidArgument, ResourceExhausted
from rillet.server.transport import convert
from rillet.server.types import AppendText, ChatMessage, GenerateSpec, Malformed, Start
from rillet.v1 import generation_pb2, inference_service_pb2

LIMITS = LimitsConfig()


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
