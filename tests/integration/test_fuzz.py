"""Property-based fuzzing of every RPC: arbitrary bytes and arbitrary well-formed messages get contract codes only.

One server serves every example (module-scoped), so each example also checks that the previous ones left it whole.
Its engines are the synthetic text engine and the echo speech double: real piper is too slow for hundreds of examples.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rillet.server.app import RilletServer
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2
from tests.conftest import eventually
from tests.doubles import EchoSpeechEngine
from tests.integration.test_bad_input import SERVICE, call_status, raw, raw_session, reason

pytestmark = pytest.mark.asyncio(loop_scope="module")
T = TypeVar("T")

CONTRACT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
}
"""What the contract (inference_service.proto, DESIGN §3) lets the server answer; UNKNOWN is never among them."""
NEIGHBOUR = "the-neighbour"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is a regression, never a flake
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# ---- strategies -----------------------------------------------------------------------------------------------

int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
float32 = st.floats(width=32)  # NaN, ±inf, subnormals, ±0 included
short_text = st.one_of(
    st.text(max_size=24),  # any Unicode but surrogates (not UTF-8-encodable), NUL included
    st.sampled_from(["", "x", "synthetic-test", "hello world", "a\0b", "é" * 3]),
)
text = st.one_of(
    short_text, st.builds(lambda c, n: c * n, st.characters(), st.integers(0, 70_000))
)  # the second: past every length limit


def mostly(valid: st.SearchStrategy[T], anything: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`valid` seven times in eight, else `anything`: enough requests pass validation to run, and each field
    still gets arbitrary values."""
    return st.sampled_from(range(8)).flatmap(lambda i: anything if i == 7 else valid)


models = mostly(st.sampled_from(["", "synthetic-test"]), text)
voices = mostly(st.sampled_from(["", "echo-voice"]), text)
request_ids = mostly(st.sampled_from(["a", "b", "c"]), text).filter(lambda i: i != NEIGHBOUR)
durations = st.builds(
    duration_pb2.Duration,
    seconds=st.one_of(st.integers(-2, 5), st.integers(-(2**63), 2**63 - 1)),
    nanos=st.one_of(st.just(0), int32),
)


@st.composite
def generate_params(draw: st.DrawFn) -> generation_pb2.GenerateParams:
    params = generation_pb2.GenerateParams(model=draw(models))
    match draw(st.sampled_from(["none", "text", "text", "text", "token_ids", "chat"])):
        case "text":
            params.text = draw(mostly(st.text(min_size=1, max_size=24), text))
        case "token_ids":
            ids = mostly(st.lists(st.integers(0, 31), min_size=1, max_size=10), st.lists(int32, max_size=20))
            params.token_ids.ids.extend(draw(ids))
        case "chat":
            messages = draw(st.lists(st.tuples(text, text), max_size=4))
            params.chat.messages.extend(generation_pb2.ChatMessage(role=r, content=c) for r, c in messages)
    if draw(st.booleans()):
        params.max_tokens = draw(mostly(st.integers(1, 16), uint32))
    sampling = params.sampling
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        if draw(st.booleans()):
            setattr(sampling, name, draw(mostly(st.floats(0.25, 1.0, width=32), float32)))
    if draw(st.booleans()):
        sampling.top_k = draw(mostly(st.integers(0, 40), int32))
    if draw(st.booleans()):
        sampling.seed = draw(uint64)
    params.stop.extend(draw(mostly(st.lists(st.text(min_size=1, max_size=8), max_size=2), st.lists(text, max_size=10))))
    if draw(st.booleans()):
        params.top_logprobs = draw(mostly(st.integers(0, 5), uint32))
    return params


@st.composite
def synthesize_params(draw: st.DrawFn) -> speech_pb2.SynthesizeParams:
    params = speech_pb2.SynthesizeParams(
        voice=draw(voices),
        text=draw(mostly(st.text(max_size=24), text)),
        sample_rate_hertz=draw(mostly(st.just(0), uint32)),
        encoding=speech_pb2.AudioEncoding.ValueType(draw(mostly(st.integers(0, 1), st.integers(0, 2**31 - 1)))),
    )
    if draw(st.booleans()):
        params.max_chunk_duration.CopyFrom(draw(durations))
    return params


@st.composite
def trace_contexts(draw: st.DrawFn) -> common_pb2.TraceContext:
    return common_pb2.TraceContext(traceparent=draw(text), tracestate=draw(text))


@st.composite
def session_requests(draw: st.DrawFn) -> inference_service_pb2.SessionRequest:
    message = inference_service_pb2.SessionRequest(request_id=draw(request_ids))
    kinds = ["start_generate"] * 3 + ["start_synthesize", "append_text", "end_input", "cancel", "none"]
    match draw(st.sampled_from(kinds)):
        case "start_generate":
            message.start_generate.params.CopyFrom(draw(generate_params()))
            if draw(st.booleans()):
                message.start_generate.timeout.CopyFrom(draw(durations))
            if draw(st.booleans()):
                message.start_generate.trace_context.CopyFrom(draw(trace_contexts()))
        case "start_synthesize":
            start = message.start_synthesize
            start.params.CopyFrom(draw(synthesize_params()))
            start.streaming_input = draw(st.booleans())
            start.text_from_request_id = draw(st.one_of(st.just(""), request_ids))
            if draw(st.booleans()):
                start.timeout.CopyFrom(draw(durations))
        case "append_text":
            message.append_text.text = draw(text)
        case "end_input":
            message.end_input.SetInParent()
        case "cancel":
            message.cancel.SetInParent()
    return message


@st.composite
def corrupted(draw: st.DrawFn, messages: st.SearchStrategy[Message]) -> bytes:
    """A well-formed message with one byte changed and maybe cut short: most no longer parse."""
    data = bytearray(draw(messages).SerializeToString()) or bytearray(b"\0")
    data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def frames(messages: st.SearchStrategy[Message]) -> st.SearchStrategy[Message | bytes]:
    return st.one_of(messages, st.binary(max_size=64), corrupted(messages))


# ---- the server -----------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fuzz_server() -> AsyncIterator[RilletServer]:
    fast = SyntheticConfig(tokens_per_second=100_000.0, first_output_delay_s=0.0)
    server = RilletServer(Settings(port=0), [SyntheticEngine(fast), EchoSpeechEngine()])
    await server.start()
    yield server
    await server.stop(grace_s=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fuzz_channel(fuzz_server: RilletServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fuzz_server.port}") as channel:
        yield channel


def check_status(status: status_pb2.Status) -> None:
    """A status the server sent (in-band or as the call's): a contract code, never UNKNOWN, and a bounded message.

    INTERNAL is in the contract, but only for the server's own faults: no input may cause one.
    """
    assert status.code in {code.value[0] for code in CONTRACT_CODES} - {code_pb2.INTERNAL}, status
    assert status.ByteSize() < 4096
    event(reason(status))  # pytest --hypothesis-show-statistics shows what the examples reached


# ---- properties -----------------------------------------------------------------------------------------------


@FUZZ
@given(st.lists(frames(session_requests()), min_size=1, max_size=5))
async def test_session_answers_any_frames_in_band_and_the_neighbour_finishes(
    fuzz_server: RilletServer, fuzz_channel: grpc.aio.Channel, fuzzed: list[Message | bytes]
) -> None:
    neighbour = inference_service_pb2.SessionRequest(
        request_id=NEIGHBOUR,
        start_generate=inference_service_pb2.StartGenerate(
            params=generation_pb2.GenerateParams(text="a neighbour", max_tokens=20)
        ),
    )
    call = raw_session(fuzz_channel)(iter([neighbour, *fuzzed]))
    neighbour_end = None
    async for response in call:
        kind = response.WhichOneof("kind")
        if kind in ("error", "rejected"):
            check_status(getattr(response, kind))
        elif kind == "finished" and response.request_id != NEIGHBOUR:
            event("finished")
        if response.request_id == NEIGHBOUR and kind in ("finished", "error"):
            neighbour_end = kind
    assert await call.code() == grpc.StatusCode.OK  # the session itself never fails for what it was sent
    assert neighbour_end == "finished"
    await eventually(lambda: fuzz_server.lifecycle.sessions == 0 and fuzz_server.router.active() == 0)


async def one_shot_status(channel: grpc.aio.Channel, method: str, request: Message | bytes) -> grpc.StatusCode:
    """Call a one-shot RPC with a raw request to its end; its status, checked against the contract."""
    try:
        if method == "ListModels":
            await channel.unary_unary(SERVICE + method, request_serializer=raw)(request)
        else:
            call: grpc.aio.UnaryStreamCall[Message | bytes, bytes] = channel.unary_stream(
                SERVICE + method, request_serializer=raw
            )(request)
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as error:
        failure = error
    else:
        event("OK")
        return grpc.StatusCode.OK
    assert failure.code() in CONTRACT_CODES, failure
    check_status(call_status(failure))
    return failure.code()


generate_requests = st.builds(inference_service_pb2.GenerateRequest, params=generate_params())
synthesize_requests = st.builds(inference_service_pb2.SynthesizeRequest, params=synthesize_params())


@FUZZ
@given(st.lists(frames(generate_requests), min_size=1, max_size=3))
async def test_generate_answers_any_request_with_a_contract_code(
    fuzz_server: RilletServer, fuzz_channel: grpc.aio.Channel, requests: list[Message | bytes]
) -> None:
    await asyncio.gather(*(one_shot_status(fuzz_channel, "Generate", r) for r in requests))
    await eventually(lambda: fuzz_server.lifecycle.sessions == 0 and fuzz_server.router.active() == 0)


@FUZZ
@given(st.lists(frames(synthesize_requests), min_size=1, max_size=3))
async def test_synthesize_answers_any_request_with_a_contract_code(
    fuzz_server: RilletServer, fuzz_channel: grpc.aio.Channel, requests: list[Message | bytes]
) -> None:
    await asyncio.gather(*(one_shot_status(fuzz_channel, "Synthesize", r) for r in requests))
    await eventually(lambda: fuzz_server.lifecycle.sessions == 0 and fuzz_server.router.active() == 0)


@FUZZ
@given(frames(st.just(inference_service_pb2.ListModelsRequest())))
async def test_list_models_answers_any_request_with_a_contract_code(
    fuzz_channel: grpc.aio.Channel, request: Message | bytes
) -> None:
    code = await one_shot_status(fuzz_channel, "ListModels", request)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
