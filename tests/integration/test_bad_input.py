"""Every bad input gets its canonical code and reason, fails only itself, and harms no neighbour request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from rillet.client import Client, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from rillet.server.app import RilletServer
from rillet.server.engine.synthetic import synthetic_text
from rillet.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc
from tests.conftest import ServerFactory, eventually

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub

GP = generation_pb2.GenerateParams
SP = generation_pb2.SamplingParams
SR = inference_service_pb2.SessionRequest
NEIGHBOUR_TOKENS = 40


def start(rid: str, params: generation_pb2.GenerateParams) -> inference_service_pb2.SessionRequest:
    return inference_service_pb2.SessionRequest(
        request_id=rid, start_generate=inference_service_pb2.StartGenerate(params=params)
    )


def reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "rillet.dev"
            return info.reason
    raise AssertionError("no ErrorInfo in the status")


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
     "BAD_TOKEN_ID"),
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
]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "kind", "code", "why"), BAD_STARTS, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD_STARTS)]
)
async def test_bad_message_fails_alone_while_neighbour_streams(
    stub: InferenceServiceAsyncStub,
    bad: inference_service_pb2.SessionRequest,
    kind: str,
    code: int,
    why: str,
) -> None:
    neighbour_started = asyncio.Event()
    done = asyncio.Event()

    async def requests() -> AsyncIterator[inference_service_pb2.SessionRequest]:
        yield start("neighbour", GP(text="the neighbour", max_tokens=NEIGHBOUR_TOKENS))
        await neighbour_started.wait()  # the bad message arrives while the neighbour is streaming
        yield bad
        await done.wait()

    text, neighbour_end = "", None
    answers: list[inference_service_pb2.SessionResponse] = []
    call = stub.Session(requests())
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
    if kind == "error":
        assert answer.seq == 0
    assert neighbour_end is not None
    assert neighbour_end.WhichOneof("kind") == "finished"
    assert text == synthetic_text("the neighbour", NEIGHBOUR_TOKENS)


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
