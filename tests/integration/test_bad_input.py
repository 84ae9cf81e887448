"""Every bad input gets its canonical code and reason, fails only itself, and harms no neighbour request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from rillet.client import Client, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from rillet.server.app import RilletServer
from rillet.server.config import SyntheticConfig
from rillet.server.engine import synthetic
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from rillet.server.transport import convert
from rillet.server.transport.servicer import PARSE_INLINE_MAX_BYTES
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, inference_service_pb2_grpc, speech_pb2
from tests.conftest import ServerFactory, eventually
from tests.doubles import EchoSpeechEngine

GP = generation_pb2.GenerateParams
SP = generation_pb2.SamplingParams
SR = inference_service_pb2.SessionRequest
CM = generation_pb2.ChatMessage
NEIGHBOUR_TOKENS = 40
SERVICE = "/rillet.v1.InferenceService/"
Frame = Message | bytes


def start(
    rid: str, params: generation_pb2.GenerateParams, timeout: duration_pb2.Duration | None = None
) -> inference_service_pb2.SessionRequest:
    return SR(request_id=rid, start_generate=inference_service_pb2.StartGenerate(params=params, timeout=timeout))


def synth(rid: str, **fields: Any) -> inference_service_pb2.SessionRequest:
    params = speech_pb2.SynthesizeParams(**{"text": "Hello.", **fields.pop("params", {})})
    return SR(request_id=rid, start_synthesize=inference_service_pb2.StartSynthesize(params=params, **fields))


def chat(*messages: tuple[str, str]) -> generation_pb2.ChatPrompt:
    return generation_pb2.ChatPrompt(messages=[CM(role=r, content=c) for r, c in messages])


def raw(message: Message | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def raw_session(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamStreamMultiCallable[Frame, inference_service_pb2.SessionResponse]:
    """The Session RPC taking raw frames (bytes or messages): how a client with a broken encoder looks."""
    return channel.stream_stream(
        SERVICE + "Session",
        request_serializer=raw,
        response_deserializer=inference_service_pb2.SessionResponse.FromString,
    )


def reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "rillet.dev"
            return info.reason
    raise AssertionError("no ErrorInfo in the status")


def call_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carries in its trailers."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no google.rpc.Status in the trailers of {error.code()}: {error.details()}")


async def one_shot(channel: grpc.aio.Channel, method: str, request: Message | bytes) -> None:
    """Call a one-shot RPC with a raw request and read it to its end."""
    if method == "ListModels":
        await channel.unary_unary(SERVICE + method, request_serializer=raw)(request)
        return
    call: grpc.aio.UnaryStreamCall[Message | bytes, bytes] = channel.unary_stream(
        SERVICE + method, request_serializer=raw
    )(request)
    async for _ in call:
        pass


def nested(depth: int) -> bytes:
    """`depth` nested groups (field 9, wire types 3 and 4): deeper than protobuf's recursion limit."""
    return b"\x4b" * depth + b"\x4c" * depth


# (bad message, expected kind, expected code, expected reason)
BAD_STARTS = [
    (start("bad", GP(max_tokens=4)), "error", code_pb2.INVALID_ARGUMENT, "EMPTY_PROMPT"),
    (start("bad", GP(text="", max_tokens=4)), "error", code_pb2.INVALID_ARGUMENT, "EMPTY_PROMPT"),
    (start("bad", GP(token_ids=generation_pb2.TokenIds(), max_tokens=4)), "error", code_pb2.INVALID_ARGUMENT,
     "EMPTY_PROMPT"),
    (start("bad", GP(text="x", max_tokens=0)), "error", code_pb2.INVALID_ARGUMENT, "MAX_TOKENS_OUT_OF_RANGE"),
    (start("bad", GP(text="x", max_tokens=100_000)), "error", code_pb2.INVALID_ARGUMENT, "MAX_TOKENS_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(temperature=2.5))), "error", code_pb2.INVALID_ARGUMENT,
     "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(temperature=-0.1))), "error", code_pb2.INVALID_ARGUMENT,
     "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(temperature=float("nan")))), "error", code_pb2.INVALID_ARGUMENT,
     "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(top_p=0.0))), "error", code_pb2.INVALID_ARGUMENT, "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(top_p=1.5))), "error", code_pb2.INVALID_ARGUMENT, "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(top_k=-1))), "error", code_pb2.INVALID_ARGUMENT, "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(min_p=1.5))), "error", code_pb2.INVALID_ARGUMENT, "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", sampling=SP(repetition_penalty=0))), "error", code_pb2.INVALID_ARGUMENT,
     "SAMPLING_OUT_OF_RANGE"),
    (start("bad", GP(text="x", stop=[""])), "error", code_pb2.INVALID_ARGUMENT, "EMPTY_STOP"),
    (start("bad", GP(text="x", stop=[str(i) for i in range(9)])), "error", code_pb2.INVALID_ARGUMENT,
     "TOO_MANY_STOPS"),
    (start("bad", GP(text="x", top_logprobs=21)), "error", code_pb2.INVALID_ARGUMENT, "TOP_LOGPROBS_OUT_OF_RANGE"),
    (start("bad", GP(token_ids=generation_pb2.TokenIds(ids=[-3]))), "error", code_pb2.INVALID_ARGUMENT,
     "TOKEN_ID_OUT_OF_RANGE"),
    (start("bad", GP(token_ids=generation_pb2.TokenIds(ids=[10**6]))), "error", code_pb2.INVALID_ARGUMENT,
     "TOKEN_ID_OUT_OF_RANGE"),
    (start("bad", GP(text="x " * 7000, max_tokens=2000)), "error", code_pb2.INVALID_ARGUMENT, "PROMPT_TOO_LONG"),
    (start("bad", GP(text="x" * 300_000)), "error", code_pb2.INVALID_ARGUMENT, "PROMPT_TOO_LARGE"),
    (start("bad", GP(chat=generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="hi")]))),
     "error", code_pb2.INVALID_ARGUMENT, "CHAT_TEMPLATE_MISSING"),
    (start("bad", GP(text="x", model="no-such-model")), "error", code_pb2.NOT_FOUND, "MODEL_NOT_FOUND"),
    (start("", GP(text="x")), "rejected", code_pb2.INVALID_ARGUMENT, "MISSING_REQUEST_ID"),
    (start("n" * 200, GP(text="x")), "rejected", code_pb2.INVALID_ARGUMENT, "REQUEST_ID_TOO_LONG"),
    (start("neighbour", GP(text="x")), "rejected", code_pb2.ALREADY_EXISTS, "DUPLICATE_REQUEST_ID"),
    (SR(request_id="ghost", cancel=inference_service_pb2.Cancel()), "rejected",
     code_pb2.NOT_FOUND, "UNKNOWN_REQUEST_ID"),
    (SR(request_id="ghost", append_text=inference_service_pb2.AppendText(text="a")),
     "rejected", code_pb2.NOT_FOUND, "UNKNOWN_REQUEST_ID"),
    (SR(request_id="ghost", end_input=inference_service_pb2.EndInput()), "rejected",
     code_pb2.NOT_FOUND, "UNKNOWN_REQUEST_ID"),
    (SR(request_id="neighbour", append_text=inference_service_pb2.AppendText(text="a")),
     "rejected", code_pb2.INVALID_ARGUMENT, "NOT_STREAMING_INPUT"),
    (SR(request_id="nokind"), "rejected", code_pb2.INVALID_ARGUMENT, "MISSING_KIND"),
    # Frames that are not a SessionRequest at all: answered `rejected`, the session goes on.
    (b"\xff\xff\xff\xff", "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),
    (b"\x0a\x02\xc3\x28", "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),  # bad UTF-8 request_id
    (b"\x12\x06\x0a\x04\x12\x02\xc3\x28", "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),  # in text
    (b"\x0a\x03\xed\xa0\x80", "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),  # an encoded surrogate
    (b"\x0c", "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),  # a stray end-group tag
    (nested(200), "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),
    (b"\x0a\x05ab", "rejected", code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE"),  # truncated
    # Conversion errors fail their message alone (a Duration past its documented range overflowed timedelta).
    (synth("bad", params={"max_chunk_duration": duration_pb2.Duration(seconds=90_000_000_000_000)}), "rejected",
     code_pb2.INVALID_ARGUMENT, "INVALID_DURATION"),
    (start("bad", GP(text="x"), timeout=duration_pb2.Duration(seconds=2**62)), "rejected",
     code_pb2.INVALID_ARGUMENT, "INVALID_DURATION"),
    (start("bad", GP(text="x"), timeout=duration_pb2.Duration(seconds=1, nanos=-1)), "rejected",
     code_pb2.INVALID_ARGUMENT, "INVALID_DURATION"),
    # Every field is bounded, and nothing echoed grows with the input.
    (SR(request_id="x" * 2_500_000, cancel=inference_service_pb2.Cancel()), "rejected",
     code_pb2.INVALID_ARGUMENT, "REQUEST_ID_TOO_LONG"),
    (SR(request_id="x" * 129, end_input=inference_service_pb2.EndInput()), "rejected",
     code_pb2.INVALID_ARGUMENT, "REQUEST_ID_TOO_LONG"),
    (SR(request_id="x" * 129), "rejected", code_pb2.INVALID_ARGUMENT, "REQUEST_ID_TOO_LONG"),
    (start("bad", GP(text="x", model="m" * 3_000_000)), "error", code_pb2.INVALID_ARGUMENT, "NAME_TOO_LONG"),
    (start("bad", GP(text="x", model="m" * 256)), "error", code_pb2.NOT_FOUND, "MODEL_NOT_FOUND"),
    (start("bad", GP(text="x", stop=["s" * 300])), "error", code_pb2.INVALID_ARGUMENT, "STOP_TOO_LONG"),
    (start("bad", GP(text="x", stop=["s"] * 100_000)), "error", code_pb2.INVALID_ARGUMENT, "TOO_MANY_STOPS"),
    (start("bad", GP(chat=chat(*[("user", "hi")] * 200_000))), "error", code_pb2.INVALID_ARGUMENT,
     "TOO_MANY_CHAT_MESSAGES"),
    (start("bad", GP(chat=chat(("r" * 65, "hi")))), "error", code_pb2.INVALID_ARGUMENT, "CHAT_ROLE_TOO_LONG"),
    (start("bad", GP(chat=chat(("user", "c" * 300_000)))), "error", code_pb2.INVALID_ARGUMENT, "PROMPT_TOO_LARGE"),
    (start("bad", GP(token_ids=generation_pb2.TokenIds(ids=[1] * 300_000))), "error", code_pb2.INVALID_ARGUMENT,
     "PROMPT_TOO_LARGE"),
    (start("bad", GP(text="x", sampling=SP(top_p=0.9))), "error", code_pb2.INVALID_ARGUMENT, "FIELD_UNSUPPORTED"),
    (start("bad", GP(text="x", json_schema='{"type": "objekt"}')), "error", code_pb2.INVALID_ARGUMENT,
     "CONSTRAINT_INVALID"),  # the engine's compile (the synthetic engine enforces constraints)
    (start("bad", GP(text="x", grammar="start: nowhere")), "error", code_pb2.INVALID_ARGUMENT, "CONSTRAINT_INVALID"),
    (start("bad", GP(text="x", regex="")), "error", code_pb2.INVALID_ARGUMENT, "CONSTRAINT_INVALID"),
    (start("bad", GP(text="x", regex="a" * 70_000)), "error", code_pb2.INVALID_ARGUMENT, "CONSTRAINT_TOO_LARGE"),
    (start("bad", GP(text="x", choice=generation_pb2.Choice())), "error", code_pb2.INVALID_ARGUMENT,
     "CONSTRAINT_INVALID"),
    (start("bad", GP(text="x", choice=generation_pb2.Choice(options=["a", ""]))), "error", code_pb2.INVALID_ARGUMENT,
     "CONSTRAINT_INVALID"),
    (start("bad", GP(text="x", choice=generation_pb2.Choice(options=["o"] * 100_000))), "error",
     code_pb2.INVALID_ARGUMENT, "CONSTRAINT_TOO_LARGE"),
    (synth("bad", params={"text": "a\0b"}), "error", code_pb2.INVALID_ARGUMENT, "NUL_CHARACTER"),
    (synth("bad", params={"voice": "v" * 300}), "error", code_pb2.INVALID_ARGUMENT, "NAME_TOO_LONG"),
    (synth("bad", params={"text": ""}, text_from_request_id="t" * 200), "error", code_pb2.INVALID_ARGUMENT,
     "REQUEST_ID_TOO_LONG"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "kind", "code", "why"), BAD_STARTS, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD_STARTS)]
)
async def test_bad_message_fails_alone_while_neighbour_streams(
    channel: grpc.aio.Channel, bad: Frame, kind: str, code: int, why: str
) -> None:
    neighbour_started = asyncio.Event()
    done = asyncio.Event()

    async def requests() -> AsyncIterator[Frame]:
        yield start("neighbour", GP(text="the neighbour", max_tokens=NEIGHBOUR_TOKENS))
        await neighbour_started.wait()  # the bad message arrives while the neighbour is streaming
        yield bad
        await done.wait()

    text, neighbour_end = "", None
    answers: list[inference_service_pb2.SessionResponse] = []
    call = raw_session(channel)(requests())
    async for response in call:
        which = response.WhichOneof("kind")
        if response.request_id == "neighbour" and which in ("token_delta", "finished", "error"):
            if which == "token_delta":
                text += response.token_delta.text
                neighbour_started.set()
            else:
                neighbour_end = response
                if answers:
                    break
        else:
            answers.append(response)
            if neighbour_end is not None:
                break
    done.set()
    call.cancel()
    assert len(answers) == 1
    answer = answers[0]
    assert answer.WhichOneof("kind") == kind
    status = getattr(answer, kind)
    assert status.code == code
    assert reason(status) == why
    assert status.message
    assert answer.ByteSize() < 512  # nothing a client sent is echoed unbounded
    if kind == "error":
        assert (answer.request_id, answer.seq) == ("bad", 0)
        assert not answer.HasField("client_message_index")
    else:  # it answers the second message, whatever its id (clipped, or none when undecodable)
        assert answer.HasField("client_message_index")
        assert answer.client_message_index == 1
    assert neighbour_end is not None
    assert neighbour_end.WhichOneof("kind") == "finished"
    assert text == synthetic_text("the neighbour", NEIGHBOUR_TOKENS)


async def test_a_constraint_kind_the_model_does_not_list_is_refused_at_the_edge(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthetic, "capabilities", lambda: synthetic.CAPABILITIES)  # as without llguidance
    server = await make_server(engines=[SyntheticEngine(SyntheticConfig()), EchoSpeechEngine()])
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        models = await client.list_models()
        text_model = next(m for m in models if m.text_capabilities is not None)
        assert text_model.text_capabilities is not None
        assert text_model.text_capabilities.constraint_kinds == frozenset()
        with pytest.raises(InvalidArgumentError) as caught:
            await client.generate("x", regex="[0-9]+").collect()
        assert (caught.value.reason, caught.value.metadata["field"]) == ("CONSTRAINT_UNSUPPORTED", "params.regex")


async def test_sdk_raises_typed_errors_with_reason_and_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.generate("x", temperature=9.0).collect()
    assert caught.value.reason == "SAMPLING_OUT_OF_RANGE"
    assert caught.value.metadata["field"] == "params.sampling.temperature"
    with pytest.raises(NotFoundError) as missing:
        await client.generate("x", model="nope").collect()
    assert "synthetic-test" in missing.value.message  # says what is served


async def test_message_over_transport_limit_fails_the_call_only(make_server: ServerFactory) -> None:
    server: RilletServer = await make_server(max_message_bytes=64 * 1024)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        call = stub.Session()
        await call.write(start("huge", GP(text="y" * 100_000)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with Client.connect(f"127.0.0.1:{server.port}") as client:  # the server is unharmed
            assert (await client.generate("after", max_tokens=3).collect()).text == synthetic_text("after", 3)
    await eventually(lambda: server.router.active() == 0 and server.lifecycle.sessions == 0)


async def test_too_many_requests_in_one_session(make_server: ServerFactory) -> None:
    server = await make_server(
        limits={"max_requests_per_session": 2}, synthetic={"tokens_per_second": 20.0, "first_output_delay_s": 0.0}
    )
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        kept = [await session.generate(f"k{i}", max_tokens=3) for i in range(2)]
        extra = await session.generate("extra", max_tokens=3)
        with pytest.raises(ResourceExhaustedError) as caught:
            await extra.collect()
        assert caught.value.reason == "TOO_MANY_REQUESTS_IN_SESSION"
        for i, stream in enumerate(kept):
            assert (await stream.collect()).text == synthetic_text(f"k{i}", 3)


@pytest.mark.parametrize(
    ("method", "frame"),
    [
        ("Generate", b"\xff\xff\xff\xff"),
        ("Generate", inference_service_pb2.GenerateRequest(params=GP(text="x")).SerializeToString()[:-1]),
        ("Synthesize", b"\x0a\x04\x12\x02\xc3\x28"),  # params.text is not UTF-8
        ("Synthesize", nested(200)),
        ("ListModels", b"\x0c"),
    ],
)
async def test_undecodable_one_shot_request_is_invalid_argument(
    channel: grpc.aio.Channel, method: str, frame: bytes
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one_shot(channel, method, frame)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = call_status(caught.value)
    assert (status.code, reason(status)) == (code_pb2.INVALID_ARGUMENT, "UNDECODABLE_MESSAGE")
    assert "Error" not in status.message  # no Python exception class, only what was wrong


async def test_bad_duration_in_one_shot_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    params = speech_pb2.SynthesizeParams(text="hi", max_chunk_duration=duration_pb2.Duration(seconds=10**14))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one_shot(channel, "Synthesize", inference_service_pb2.SynthesizeRequest(params=params))
    assert reason(call_status(caught.value)) == "INVALID_DURATION"


async def test_an_unexpected_error_is_internal_logged_once_and_fails_only_its_call(
    client: Client, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_generate_spec, real_session_command = convert.generate_spec, convert.session_command

    def generate_spec(params: generation_pb2.GenerateParams, limits: Any) -> Any:
        if params.text == "boom":
            raise RuntimeError("a bug")
        return real_generate_spec(params, limits)

    def session_command(message: inference_service_pb2.SessionRequest, limits: Any) -> Any:
        if message.request_id == "boom":
            raise RuntimeError("a bug")
        return real_session_command(message, limits)

    monkeypatch.setattr(convert, "generate_spec", generate_spec)
    monkeypatch.setattr(convert, "session_command", session_command)
    with caplog.at_level(logging.ERROR, logger="rillet.server.transport.servicer"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await one_shot(channel, "Generate", inference_service_pb2.GenerateRequest(params=GP(text="boom")))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert reason(call_status(caught.value)) == "INTERNAL"
        assert (await client.generate("fine", max_tokens=3).collect()).text == synthetic_text("fine", 3)

        responses = raw_session(channel)(
            iter([start("neighbour", GP(text="n", max_tokens=3)), start("boom", GP(text="x"))])
        )
        answers = {(r.request_id, r.WhichOneof("kind")): r async for r in responses}
    assert answers[("boom", "rejected")].rejected.code == code_pb2.INTERNAL
    assert ("neighbour", "finished") in answers
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError, RuntimeError]  # once per bug


async def test_large_frames_keep_their_order(channel: grpc.aio.Channel) -> None:
    """A frame parsed in a worker thread is applied before the small frame sent after it."""
    big = start("big", GP(text="b" * 100_000, max_tokens=2000))
    assert big.ByteSize() > PARSE_INLINE_MAX_BYTES
    cancel = SR(request_id="big", cancel=inference_service_pb2.Cancel())
    responses = [r async for r in raw_session(channel)(iter([big, cancel]))]
    assert [r.WhichOneof("kind") for r in responses][-1] == "finished"
    assert responses[-1].finished.reason == common_pb2.FINISH_REASON_CANCELLED


async def test_a_large_one_shot_request_is_parsed_off_the_loop_and_served(channel: grpc.aio.Channel) -> None:
    """A one-shot frame over PARSE_INLINE_MAX_BYTES is parsed in a worker thread: served, or refused when bad."""
    prompt = "b" * (PARSE_INLINE_MAX_BYTES + 1000)
    request = inference_service_pb2.GenerateRequest(params=GP(text=prompt, max_tokens=3))
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    responses = [r async for r in stub.Generate(request)]
    assert "".join(r.token_delta.text for r in responses) == synthetic_text(prompt, 3)
    assert responses[-1].finished.usage.output_tokens == 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one_shot(channel, "Generate", request.SerializeToString()[:-1])  # truncated: undecodable
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(call_status(caught.value)) == "UNDECODABLE_MESSAGE"


async def test_a_long_valid_timeout_is_no_limit(channel: grpc.aio.Channel) -> None:
    timeout = duration_pb2.Duration(seconds=315_576_000_000, nanos=999_999_999)  # the largest valid Duration
    responses = [r async for r in raw_session(channel)(iter([start("r", GP(text="x", max_tokens=3), timeout=timeout)]))]
    assert responses[-1].WhichOneof("kind") == "finished"


async def test_a_bad_append_text_is_rejected_and_its_request_goes_on(make_server: ServerFactory) -> None:
    server = await make_server(engines=[SyntheticEngine(SyntheticConfig()), EchoSpeechEngine()])

    def append(text: str) -> inference_service_pb2.SessionRequest:
        return SR(request_id="s", append_text=inference_service_pb2.AppendText(text=text))

    frames = [
        synth("s", params={"text": "", "voice": "echo-voice"}, streaming_input=True),
        append("a\0b"),
        append("a" * (server.settings.limits.max_text_piece_chars + 1)),
        append("fine."),
        SR(request_id="s", end_input=inference_service_pb2.EndInput()),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        responses = [r async for r in raw_session(channel)(iter(frames))]
    rejected = [reason(r.rejected) for r in responses if r.WhichOneof("kind") == "rejected"]
    assert rejected == ["NUL_CHARACTER", "TEXT_PIECE_TOO_LARGE"]
    spoken = [r.audio_chunk.text for r in responses if r.WhichOneof("kind") == "audio_chunk"]
    assert spoken == ["fine."]
    assert responses[-1].finished.usage.input_characters == len("fine.")


@pytest.mark.voice
async def test_nul_in_synthesis_text_is_invalid_argument_on_the_real_voice(make_server: ServerFactory) -> None:
    """Piper failed INTERNAL on a NUL; the edge refuses it, and the streaming request it was meant for goes on."""
    server = await make_server(speech_engine="piper")
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.synthesize("Hello\0 world.").collect()
        assert caught.value.reason == "NUL_CHARACTER"

    def append(text: str) -> inference_service_pb2.SessionRequest:
        return SR(request_id="s", append_text=inference_service_pb2.AppendText(text=text))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        frames = [synth("s", params={"text": ""}, streaming_input=True), append("Hel\0lo."), append("Hello.")]
        frames.append(SR(request_id="s", end_input=inference_service_pb2.EndInput()))
        responses = [r async for r in raw_session(channel)(iter(frames))]
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds[0] == "rejected"
    assert reason(responses[0].rejected) == "NUL_CHARACTER"
    assert "audio_chunk" in kinds
    assert kinds[-1] == "finished"
