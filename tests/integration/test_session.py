"""Sessions end to end through the real SDK and raw stubs: ordering, concurrency, cancel, disconnect, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest

from rillet.client import (
    Client,
    DeadlineExceededError,
    Finished,
    FinishReason,
    InvalidArgumentError,
    ResourceExhaustedError,
    TokenDelta,
)
from rillet.server.app import RilletServer
from rillet.server.engine.synthetic import synthetic_text
from rillet.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc
from tests.conftest import ServerFactory, eventually

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub

SLOW = {"synthetic": {"tokens_per_second": 20.0, "first_output_delay_s": 0.0}}


async def test_generate_streams_deltas_then_finished(client: Client) -> None:
    events = [e async for e in client.generate("hello world", max_tokens=12)]
    deltas, final = events[:-1], events[-1]
    assert all(isinstance(d, TokenDelta) for d in deltas)
    assert isinstance(final, Finished)
    assert "".join(d.text for d in deltas if isinstance(d, TokenDelta)) == synthetic_text("hello world", 12)
    assert final.reason is FinishReason.LENGTH
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens == 2
    assert final.timings.time_to_first_output_s is not None
    assert 0 <= final.timings.queue_s <= final.timings.time_to_first_output_s <= final.timings.total_s


async def test_session_seq_is_contiguous_and_requests_interleave(
    stub: InferenceServiceAsyncStub,
) -> None:
    prompts = {f"q{i}": f"prompt number {i}" for i in range(4)}

    async def requests() -> AsyncIterator[inference_service_pb2.SessionRequest]:
        for rid, text in prompts.items():
            params = generation_pb2.GenerateParams(text=text, max_tokens=16)
            yield inference_service_pb2.SessionRequest(
                request_id=rid, start_generate=inference_service_pb2.StartGenerate(params=params)
            )

    order: list[tuple[str, str | None]] = []
    seqs: dict[str, list[int]] = {rid: [] for rid in prompts}
    texts: dict[str, str] = dict.fromkeys(prompts, "")
    finished: dict[str, int] = {}
    async for response in stub.Session(requests()):
        rid = response.request_id
        kind = response.WhichOneof("kind")
        order.append((rid, kind))
        seqs[rid].append(response.seq)
        if kind == "token_delta":
            texts[rid] += response.token_delta.text
        else:
            assert kind == "finished"
            finished[rid] = finished.get(rid, 0) + 1
    for rid, text in prompts.items():
        assert seqs[rid] == list(range(len(seqs[rid])))
        assert texts[rid] == synthetic_text(text, 16)
        assert finished[rid] == 1
        assert [k for r, k in order if r == rid][-1] == "finished"  # the terminal message comes last
    first_finish = next(i for i, (_, kind) in enumerate(order) if kind == "finished")
    assert len({r for r, _ in order[:first_finish]}) > 1, "requests should stream concurrently"


async def test_concurrent_requests_in_one_session(client: Client) -> None:
    async with client.session() as session:
        streams = [await session.generate(f"concurrent {i}", max_tokens=8 + i) for i in range(6)]
        results = await asyncio.gather(*(s.collect() for s in streams))
    for i, result in enumerate(results):
        assert result.text == synthetic_text(f"concurrent {i}", 8 + i)
        assert result.finished.reason is FinishReason.LENGTH


async def test_cancel_frees_the_engine_and_spares_the_neighbour(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        victim = await session.generate("long one", max_tokens=1000)
        neighbour = await session.generate("short one", max_tokens=6)
        iterator = aiter(victim)
        first = await anext(iterator)
        assert isinstance(first, TokenDelta)
        assert server.router.active() == 2
        await session.cancel(victim.request_id)
        rest = [e async for e in iterator]
        assert isinstance(rest[-1], Finished)
        assert rest[-1].reason is FinishReason.CANCELLED
        assert rest[-1].usage.output_tokens < 1000
        result = await neighbour.collect()
        assert result.text == synthetic_text("short one", 6)
        await eventually(lambda: server.router.active() == 0)


async def test_leaving_the_loop_early_cancels(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        async with client.session() as session:
            stream = await session.generate("break early", max_tokens=1000)
            async with stream:
                async for _ in stream:
                    break
            await eventually(lambda: server.router.active() == 0)
            assert session.rejections == type(session.rejections)()
        one_shot = client.generate("one shot", max_tokens=1000)
        async with one_shot:
            async for _ in one_shot:
                break
        await eventually(lambda: server.router.active() == 0)


async def test_disconnect_aborts_every_request(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    call = stub.Session()
    for i in range(3):
        params = generation_pb2.GenerateParams(text="disconnect", max_tokens=1000)
        await call.write(
            inference_service_pb2.SessionRequest(
                request_id=f"d{i}", start_generate=inference_service_pb2.StartGenerate(params=params)
            )
        )
    await call.read()
    await eventually(lambda: server.router.active() == 3)
    await channel.close()  # the client goes away without a word
    await eventually(lambda: server.router.active() == 0 and server.lifecycle.sessions == 0)


async def test_call_deadline_aborts_the_session(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session(timeout=0.3) as session:
        stream = await session.generate("deadline", max_tokens=1000)
        with pytest.raises(DeadlineExceededError):
            await stream.collect()
    await eventually(lambda: server.router.active() == 0)
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(DeadlineExceededError):
            await client.generate("one-shot deadline", max_tokens=1000, timeout=0.3).collect()
    await eventually(lambda: server.router.active() == 0)


async def test_request_timeout_fails_only_that_request(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        slow = await session.generate("too slow", max_tokens=1000, timeout=0.2)
        neighbour = await session.generate("in time", max_tokens=5)
        with pytest.raises(DeadlineExceededError) as caught:
            await slow.collect()
        assert caught.value.reason == "REQUEST_TIMEOUT"
        assert caught.value.request_id == slow.request_id
        assert (await neighbour.collect()).text == synthetic_text("in time", 5)
    await eventually(lambda: server.router.active() == 0)


async def test_queue_full_is_resource_exhausted_with_retry_hint(make_server: ServerFactory) -> None:
    server = await make_server(
        synthetic={"slots": 1, "tokens_per_second": 20.0, "first_output_delay_s": 0.0}, scheduler={"max_queue": 1}
    )
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        running = await session.generate("running", max_tokens=4)
        queued = await session.generate("queued", max_tokens=4)
        refused = await session.generate("refused", max_tokens=4)
        with pytest.raises(ResourceExhaustedError) as caught:
            await refused.collect()
        assert caught.value.retry_after == pytest.approx(1.0)
        assert caught.value.reason == "QUEUE_FULL"
        first, second = await running.collect(), await queued.collect()
        assert first.finished.timings.queue_s < second.finished.timings.queue_s
        assert second.text == synthetic_text("queued", 4)


async def test_half_close_lets_requests_finish(server: RilletServer, client: Client) -> None:
    session = client.session()
    stream = await session.generate("half close", max_tokens=10)
    await session.close()  # no new requests; the one in flight still completes
    assert (await stream.collect()).text == synthetic_text("half close", 10)
    assert server.lifecycle.sessions == 0


async def test_logprobs_and_stop_strings(client: Client) -> None:
    expected = synthetic_text("stops", 20)
    stop = expected.split()[5] + " "
    result = await client.generate("stops", max_tokens=20, stop=[stop]).collect()
    assert result.finished.reason is FinishReason.STOP_SEQUENCE
    assert result.finished.stop_sequence == stop
    assert result.text == expected[: expected.index(stop)]
    events = [e async for e in client.generate("logprobs", max_tokens=3, top_logprobs=2)]
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert all(len(d.logprobs) == len(d.token_ids) for d in deltas)
    assert all(len(lp.top) == 2 and lp.token.token_id == d.token_ids[0] for d in deltas for lp in d.logprobs)


async def test_a_start_the_server_refuses_raises_instead_of_waiting(client: Client) -> None:
    async with client.session() as session:
        too_long = await session.generate("id too long", request_id="x" * 500, max_tokens=2)
        with pytest.raises(InvalidArgumentError) as caught:
            await asyncio.wait_for(too_long.collect(), timeout=10)
        assert caught.value.reason == "REQUEST_ID_TOO_LONG"
        fine = await session.generate("still fine", max_tokens=3)
        assert (await fine.collect()).text == synthetic_text("still fine", 3)


async def test_a_refused_start_is_matched_by_its_message_index_not_its_clipped_id(make_server: ServerFactory) -> None:
    """The server echoes an id over its limit clipped to 64 characters ("…" at the end), which a valid id can share:
    the refusal names the message it answers, so it fails the request it refused and never its neighbour."""
    server = await make_server(synthetic={"first_output_delay_s": 0.5})  # `valid` sends nothing for a while
    prefix = "p" * 64
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        valid = await session.generate("kept", request_id=prefix + "-valid", max_tokens=3)
        refused = await session.generate("refused", request_id=prefix + "-" + "x" * 200, max_tokens=3)
        with pytest.raises(InvalidArgumentError) as caught:
            await asyncio.wait_for(refused.collect(), timeout=10)
        assert (caught.value.reason, caught.value.client_message_index) == ("REQUEST_ID_TOO_LONG", 1)
        assert caught.value.request_id == refused.request_id  # the SDK's own id, not the clipped echo
        assert (await valid.collect()).text == synthetic_text("kept", 3)
        assert [r.client_message_index for r in session.rejections] == [1]


async def test_a_start_refused_for_an_out_of_range_timeout_raises(client: Client) -> None:
    async with client.session() as session:
        stream = await session.generate("forever", max_tokens=2, timeout=1e12)  # past Duration's range
        with pytest.raises(InvalidArgumentError) as caught:
            await asyncio.wait_for(stream.collect(), timeout=10)
        assert caught.value.reason == "INVALID_DURATION"
