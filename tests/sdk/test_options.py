"""One options object per request kind: what it holds, how keywords build it, and what it puts on the wire."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from rillet.client import ChatMessage, Client, GenerateOptions, SynthesizeOptions
from rillet.client import _convert as convert
from rillet.client._options import GenerateFields, SynthesizeFields, resolve
from rillet.v1 import common_pb2, generation_pb2, speech_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.sdk import raw_server

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "congo=t61rcWkgMzE"


@pytest.mark.parametrize(
    ("options", "fields"), [(GenerateOptions, GenerateFields), (SynthesizeOptions, SynthesizeFields)]
)
def test_the_keywords_are_exactly_the_options_fields(options: type[Any], fields: type[Any]) -> None:
    declared = {f.name: f.type for f in dataclasses.fields(options)}
    assert typing.get_type_hints(fields) == typing.get_type_hints(options)
    assert set(fields.__annotations__) == set(declared)


def test_keywords_override_the_options_given_with_them() -> None:
    base = GenerateOptions(max_tokens=8, temperature=0.7, stop=["\n"])
    assert resolve(base, GenerateOptions(), {}) is base
    assert resolve(None, GenerateOptions(), {"seed": 3}) == GenerateOptions(seed=3)
    merged = resolve(base, GenerateOptions(), {"temperature": 0.0, "timeout": 2.0})
    assert merged == GenerateOptions(max_tokens=8, temperature=0.0, stop=("\n",), timeout=2.0)
    assert base.temperature == 0.7  # frozen: nothing changes an options object in place
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.max_tokens = 16  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword"):
        resolve(base, GenerateOptions(), {"temprature": 0.5})


def test_stop_is_a_list_of_strings_never_one_string() -> None:
    assert GenerateOptions(stop=["a", "b"]).stop == ("a", "b")  # kept as a tuple: hashable, unchangeable
    with pytest.raises(TypeError, match="list of strings"):
        GenerateOptions(stop="\n")


def test_unset_options_leave_the_params_as_the_server_defaults_them() -> None:
    assert convert.generate_params("x", GenerateOptions()) == generation_pb2.GenerateParams(text="x")
    assert not convert.generate_params("x", GenerateOptions()).HasField("sampling")
    speech = convert.synthesize_params("Hi.", SynthesizeOptions())
    assert speech == speech_pb2.SynthesizeParams(text="Hi.", encoding=speech_pb2.AUDIO_ENCODING_LINEAR16)


def test_every_generate_option_reaches_the_params() -> None:
    options = GenerateOptions(
        model="m",
        max_tokens=8,
        temperature=0.0,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        seed=7,
        stop=["\n"],
        top_logprobs=2,
    )
    params = convert.generate_params([ChatMessage("user", "hi")], options)
    assert (params.model, params.max_tokens, params.top_logprobs, list(params.stop)) == ("m", 8, 2, ["\n"])
    assert params.sampling.HasField("temperature")  # 0.0 is sent, not left to the default
    sampling = params.sampling
    assert (sampling.top_k, sampling.seed) == (40, 7)
    assert [sampling.top_p, sampling.min_p, sampling.repetition_penalty] == pytest.approx([0.9, 0.05, 1.1])
    assert [(m.role, m.content) for m in params.chat.messages] == [("user", "hi")]


class Point(BaseModel):
    x: int
    label: Literal["a", "b"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"json_schema": '{"type": "object"}'}, {"json_schema": '{"type": "object"}'}),
        ({"json_schema": {"type": "array"}}, {"json_schema": '{"type": "array"}'}),
        ({"json_schema": Point}, {"json_schema": json.dumps(Point.model_json_schema())}),
        ({"regex": "[0-9]+"}, {"regex": "[0-9]+"}),
        ({"grammar": 'start: "x"'}, {"grammar": 'start: "x"'}),
        ({"choice": ["yes", "no"]}, {"choice": generation_pb2.Choice(options=["yes", "no"])}),
        ({"choice": []}, {"choice": generation_pb2.Choice()}),  # sent empty: the server refuses it, never ignores it
        ({"json_object": True}, {"json_object": generation_pb2.JsonObject()}),
    ],
    ids=lambda value: str(value)[:40],
)
def test_each_output_constraint_reaches_its_field_of_the_oneof(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    params = convert.generate_params("x", GenerateOptions(**fields))
    assert params == generation_pb2.GenerateParams(text="x", **expected)
    assert params.WhichOneof("constraint") == next(iter(expected))


def test_a_json_schema_is_kept_as_its_text_and_only_one_constraint_is_taken() -> None:
    assert GenerateOptions(json_schema=Point).json_schema == json.dumps(Point.model_json_schema())
    assert GenerateOptions(json_schema=Point) == GenerateOptions(json_schema=Point.model_json_schema())
    with pytest.raises(ValueError, match=r"at most one output constraint.*json_schema, regex"):
        GenerateOptions(json_schema={}, regex="x")
    with pytest.raises(ValueError, match="at most one"):
        resolve(GenerateOptions(choice=["a"]), GenerateOptions(), {"json_object": True})
    with pytest.raises(TypeError, match="list of strings"):
        GenerateOptions(choice="yes")
    with pytest.raises(TypeError, match="pydantic model class"):
        GenerateOptions(json_schema=42)  # type: ignore[arg-type]
    assert GenerateOptions(choice=["a", "b"]).choice == ("a", "b")


def test_start_messages_carry_the_timeout_and_the_trace_context() -> None:
    start = convert.start_generate("x", GenerateOptions(timeout=1.5, traceparent=TRACEPARENT, tracestate=TRACESTATE))
    assert start.timeout.ToNanoseconds() == 1_500_000_000
    assert (start.trace_context.traceparent, start.trace_context.tracestate) == (TRACEPARENT, TRACESTATE)
    assert not convert.start_generate("x", GenerateOptions()).HasField("timeout")
    speech = convert.start_synthesize("", SynthesizeOptions(voice="v", max_chunk_s=0.2), text_from_request_id="g")
    assert (speech.params.voice, speech.text_from_request_id, speech.streaming_input) == ("v", "g", False)
    assert speech.params.max_chunk_duration.ToMilliseconds() == 200


class Recorder:
    """A raw server that answers every request with one delta (or chunk) and records what it received."""

    def __init__(self) -> None:
        self.generate: list[tuple[pb.GenerateRequest, dict[str, str], float | None]] = []
        self.synthesize: list[pb.SynthesizeRequest] = []
        self.session: list[pb.SessionRequest] = []

    async def on_generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        self.generate.append((request, dict(context.invocation_metadata()), context.time_remaining()))
        yield pb.GenerateResponse(seq=0, token_delta=generation_pb2.TokenDelta(text="x", token_ids=[1]))
        yield pb.GenerateResponse(seq=1, finished=common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH))

    async def on_synthesize(self, request: pb.SynthesizeRequest, context: Any) -> AsyncIterator[pb.SynthesizeResponse]:
        self.synthesize.append(request)
        yield pb.SynthesizeResponse(seq=0, finished=common_pb2.Finished(reason=common_pb2.FINISH_REASON_STOP))

    async def on_session(
        self, requests: AsyncIterator[pb.SessionRequest], context: Any
    ) -> AsyncIterator[pb.SessionResponse]:
        async for request in requests:
            self.session.append(request)
            finished = common_pb2.Finished(reason=common_pb2.FINISH_REASON_STOP)
            yield pb.SessionResponse(request_id=request.request_id, seq=0, finished=finished)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    handlers = {
        "Generate": raw_server.generate(recorder.on_generate),
        "Synthesize": raw_server.synthesize(recorder.on_synthesize),
        "Session": raw_server.session(recorder.on_session),
    }
    async with raw_server.serving(handlers) as target:
        yield recorder, target


async def test_one_options_object_asks_the_same_of_a_call_and_of_a_session(recorder: tuple[Recorder, str]) -> None:
    server, target = recorder
    options = GenerateOptions(max_tokens=8, temperature=0.0, stop=["\n"], timeout=30.0)
    async with Client.connect(target) as client:
        await client.generate("same", options).collect()
        await client.generate("same", max_tokens=8, temperature=0.0, stop=["\n"], timeout=30.0).collect()
        async with client.session() as session:
            await (await session.generate("same", options)).collect()
            await (await session.synthesize("Hi.", SynthesizeOptions(voice="v"), sample_rate_hertz=16000)).collect()
            await session.close()
        await client.synthesize("Hi.", voice="v", sample_rate_hertz=16000).collect()
    (by_object, _, deadline), (by_keywords, _, _) = server.generate
    assert by_object == by_keywords
    started = server.session[0].start_generate
    assert started.params == by_object.params
    assert started.timeout.ToSeconds() == 30  # a session request's own limit ...
    assert deadline is not None  # ... and a one-shot call's deadline (gRPC rounds it up a little)
    assert 0 < deadline < 31
    assert server.session[1].start_synthesize.params == server.synthesize[0].params
    assert server.synthesize[0].params.sample_rate_hertz == 16000


async def test_a_given_trace_context_goes_with_a_call_and_with_a_session_request(
    recorder: tuple[Recorder, str],
) -> None:
    server, target = recorder
    traced = GenerateOptions(traceparent=TRACEPARENT, tracestate=TRACESTATE)
    async with Client.connect(target) as client:
        await client.generate("traced", traced).collect()
        async with client.session() as session:
            await (await session.generate("traced", traced)).collect()
            await session.close()
    [(_, metadata, _)] = server.generate
    assert (metadata["traceparent"], metadata["tracestate"]) == (TRACEPARENT, TRACESTATE)
    context = server.session[0].start_generate.trace_context
    assert (context.traceparent, context.tracestate) == (TRACEPARENT, TRACESTATE)
