"""The control plane through the SDK and a raw client: server info, load, tokenizers, Abort across calls and tenants,
and the ORCA load reports gRPC clients balance on."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rillet.client import (
    ChatMessage,
    Client,
    Finished,
    FinishReason,
    InvalidArgumentError,
    NotFoundError,
    Priority,
    ResourceExhaustedError,
    TokenDelta,
    UnauthenticatedError,
)
from rillet.server.app import RilletServer
from rillet.server.engine.synthetic import VOCABULARY, VOCABULARY_SIZE, synthetic_text
from rillet.server.transport import orca
from tests.conftest import ServerFactory, eventually
from tests.doubles import EchoSpeechEngine

ROOT = Path(__file__).resolve().parents[2]
SLOW = {"synthetic": {"tokens_per_second": 20.0, "first_output_delay_s": 0.0}}
ACME, BETA = "acme-token-1", "beta-token-1"
TENANTS = {"security": {"tenants": {"acme": {"tokens": [ACME]}, "beta": {"tokens": [BETA]}}}}


async def started(stream: AsyncIterator[object]) -> None:
    """Wait for a stream's first output."""
    item = await anext(stream)
    assert isinstance(item, TokenDelta)


async def test_server_info_names_engines_models_limits_and_what_they_offer(make_server: ServerFactory) -> None:
    server = await make_server(max_connection_age_s=300)
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        info = await client.server_info()
    [engine] = info.engines
    assert (engine.name, engine.slots, engine.is_test_engine, engine.tokenizer) == ("synthetic", 64, True, True)
    assert not engine.reports_kv_cache  # the synthetic engine has no KV cache
    assert [m.name for m in info.models] == ["synthetic-test"]
    assert (info.max_tokens, info.max_queue, info.max_connection_age_s) == (2048, 64, 300.0)
    assert info.min_load_interval_s == 0.5
    assert not info.draining
    assert info.start_time == server.control.start_time


async def test_tokenizer_counts_as_generation_does_and_refuses_as_it_does(make_server: ServerFactory) -> None:
    server = await make_server(limits={"max_prompt_chars": 64})
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        prompt = "the river runs past a mill"
        ids = await client.tokenize(prompt)
        assert ids == tuple(VOCABULARY.index(word) for word in prompt.split())
        count = await client.count_tokens(prompt)
        result = await client.generate(prompt, max_tokens=3).collect()
        assert count.tokens == result.finished.usage.input_tokens == 6
        assert count.context_length == 8192
        assert await client.detokenize([0, 1]) == "the river "
        assert await client.detokenize(result.token_ids) == result.text

        with pytest.raises(InvalidArgumentError) as chat:  # the synthetic model has no chat template
            await client.tokenize([ChatMessage("user", "hi")])
        assert chat.value.reason == "CHAT_TEMPLATE_MISSING"
        with pytest.raises(InvalidArgumentError) as large:
            await client.count_tokens("word " * 20)
        assert large.value.reason == "PROMPT_TOO_LARGE"
        with pytest.raises(InvalidArgumentError) as empty:
            await client.tokenize("")
        assert empty.value.reason == "EMPTY_PROMPT"
        with pytest.raises(InvalidArgumentError) as outside:
            await client.detokenize([VOCABULARY_SIZE])
        assert outside.value.reason == "TOKEN_ID_OUT_OF_RANGE"
        with pytest.raises(NotFoundError):
            await client.tokenize("hi", model="no-such-model")


async def test_a_model_whose_engine_cannot_tokenize_refuses_with_its_reason(make_server: ServerFactory) -> None:
    server = await make_server(engines=[EchoSpeechEngine()])  # a speech engine: no text model to tokenize for
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        info = await client.server_info()
        assert [(e.name, e.tokenizer) for e in info.engines] == [("echo-speech", False)]
        with pytest.raises(NotFoundError) as caught:
            await client.tokenize("hi")
        assert caught.value.reason == "NO_DEFAULT_MODEL"


async def test_abort_ends_a_request_of_another_session_cancelled_in_its_own_stream(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    target = f"127.0.0.1:{server.port}"
    async with Client.connect(target) as worker, Client.connect(target) as supervisor:
        async with worker.session() as session:
            long = await session.generate("go on", max_tokens=2000, request_id="job-7")
            other = await session.generate("unaffected", max_tokens=5, request_id="job-8")
            iterator = aiter(long)
            await started(iterator)
            assert await supervisor.abort("job-7") == ("job-7",)
            items = [item async for item in iterator]
            assert isinstance(items[-1], Finished)
            assert items[-1].reason is FinishReason.CANCELLED
            assert (await other.collect()).text == synthetic_text("unaffected", 5)
        with pytest.raises(NotFoundError) as gone:
            await supervisor.abort("job-7")  # ended: nothing in flight under that id
        assert gone.value.reason == "REQUEST_NOT_FOUND"
    await eventually(lambda: len(server.lifecycle.requests) == 0)
    assert server.router.active() == 0


async def test_abort_reaches_one_shot_calls_by_their_request_id_and_all_of_a_tenant(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW)
    target = f"127.0.0.1:{server.port}"
    async with Client.connect(target) as client, Client.connect(target) as supervisor:
        one_shot = client.generate("one shot", max_tokens=2000, request_id="batch-1", priority=Priority.BATCH)
        iterator = aiter(one_shot)
        await started(iterator)
        async with client.session() as session:
            second = await session.generate("second", max_tokens=2000)
            second_items = aiter(second)  # held: a dropped iterator closes its stream, which cancels the request
            await started(second_items)
            ended = await supervisor.abort_all()
            assert sorted(ended) == ["batch-1", second.request_id]
            items = [item async for item in iterator]
            assert isinstance(items[-1], Finished)
            assert items[-1].reason is FinishReason.CANCELLED
            rest = [item async for item in second_items]
            assert isinstance(rest[-1], Finished)
            assert rest[-1].reason is FinishReason.CANCELLED
    await eventually(lambda: server.router.active() == 0)


async def test_abort_never_reaches_another_tenants_request(make_server: ServerFactory) -> None:
    server = await make_server(**SLOW, **TENANTS)
    target = f"127.0.0.1:{server.port}"
    async with Client.connect(target, token=ACME) as acme, Client.connect(target, token=BETA) as beta:
        async with acme.session() as session:
            stream = await session.generate("acme's work", max_tokens=40, request_id="shared-id")
            with pytest.raises(NotFoundError) as refused:
                await beta.abort("shared-id")
            assert refused.value.reason == "REQUEST_NOT_FOUND"  # as if nothing were there: nothing of acme is told
            assert await beta.abort_all() == ()
            result = await stream.collect()
            assert result.finished.reason is FinishReason.LENGTH
            assert result.text == synthetic_text("acme's work", 40)
        async with Client.connect(target) as anonymous:
            with pytest.raises(UnauthenticatedError):
                await anonymous.abort("shared-id")


async def test_load_and_its_watch_count_running_waiting_and_throughput(make_server: ServerFactory) -> None:
    server = await make_server(synthetic={"slots": 1, "tokens_per_second": 20.0, "first_output_delay_s": 0.0})
    async with Client.connect(f"127.0.0.1:{server.port}") as client, client.session() as session:
        running = await session.generate("first", max_tokens=2000)
        running_items = aiter(running)
        await started(running_items)
        waiting = await session.generate("second", max_tokens=3, priority=Priority.BATCH)
        await eventually(lambda: server.router.queues()[0].admission.queued == 1)
        load = await client.load()
        [engine] = load.engines
        assert (engine.running, engine.waiting, engine.waiting_batch, engine.slots) == (1, 1, 1, 1)
        assert engine.utilization == load.utilization == 1.0  # a request waits: saturated
        assert engine.kv_cache_utilization is None
        assert load.open_calls == 1

        watched = client.watch_load(interval=0.01)  # raised to the server's minimum (0.5 s)
        first = await anext(watched)
        assert first.engines[0].running == 1
        await running.aclose()
        assert (await waiting.collect()).finished.reason is FinishReason.LENGTH
        later = await anext(watched)
        assert later.time - first.time >= 0.45
        assert later.engines[0].requests_per_second > 0
        await watched.aclose()


async def test_report_streams_are_bounded(make_server: ServerFactory) -> None:
    server = await make_server(load={"max_streams": 1})
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        watched = client.watch_load()
        await anext(watched)
        with pytest.raises(ResourceExhaustedError) as caught:
            await anext(client.watch_load())
        assert caught.value.reason == "LOAD_STREAM_LIMIT"
        await watched.aclose()
        await eventually(lambda: server._report_streams.open == 0)


async def orca_reports(server: RilletServer, count: int, interval_s: float = 0.0) -> list[Any]:
    """`count` out-of-band ORCA reports, read as a raw gRPC client reads them (no token: the service is open)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = orca.OrcaLoadReportRequest()
        request.report_interval.nanos = int(interval_s * 1e9)  # the message's own Duration: a pool of its own
        call: Any = channel.unary_stream(f"/{orca.SERVICE_NAME}/StreamCoreMetrics")(request.SerializeToString())
        reports = []
        async for raw in call:
            reports.append(orca.OrcaLoadReport.FromString(raw))
            if len(reports) == count:
                break
        call.cancel()
        return reports


async def test_orca_reports_out_of_band_what_the_load_says(make_server: ServerFactory) -> None:
    server = await make_server(
        synthetic={"slots": 4, "tokens_per_second": 20.0, "first_output_delay_s": 0.0},
        load={"min_interval_s": 0.05},
        **TENANTS,
    )
    async with Client.connect(f"127.0.0.1:{server.port}", token=ACME) as client, client.session() as session:
        streams = [aiter(await session.generate(f"load {n}", max_tokens=2000)) for n in range(3)]
        for stream in streams:
            await started(stream)
        finished = await client.generate("quick", max_tokens=1).collect()
        assert finished.finished.reason is FinishReason.LENGTH
        loop = asyncio.get_running_loop()
        began = loop.time()
        first, second = await orca_reports(server, 2, interval_s=0.1)
        assert loop.time() - began >= 0.1  # the second waited its interval
        for report in (first, second):
            assert report.application_utilization == pytest.approx(0.75)  # 3 of 4 slots running
            assert report.utilization["synthetic"] == pytest.approx(0.75)
            assert report.named_metrics["running"] == report.named_metrics["synthetic.running"] == 3
            assert report.named_metrics["waiting"] == 0
            assert "kv_cache_utilization" not in report.named_metrics  # no engine reports a KV cache
            assert report.rps_fractional > 0  # the one-shot request ended
            assert report.cpu_utilization >= 0


async def test_per_call_reports_ride_in_one_shot_trailers_when_asked(make_server: ServerFactory) -> None:
    """Read with grpcurl (grpc-go): C-core keeps endpoint-load-metrics-bin for its balancer, out of Python's sight."""
    server = await make_server(load={"per_call_reports": True})
    grpcurl = str(ROOT / ".tools" / "bin" / "grpcurl")
    request = '{"params": {"text": "hi", "max_tokens": 2}}'
    process = await asyncio.create_subprocess_exec(
        grpcurl, "-plaintext", "-v", "-d", request, f"127.0.0.1:{server.port}", "rillet.v1.InferenceService/Generate",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    trailers = out.decode().partition("Response trailers received:")[2]
    match = re.search(rf"^{orca.TRAILER}: (\S+)$", trailers, re.M)
    assert match is not None, out.decode()
    report = orca.OrcaLoadReport.FromString(base64.b64decode(match.group(1) + "=="))
    assert set(report.named_metrics) == {"running", "waiting", "synthetic.running", "synthetic.waiting"}
    assert "synthetic" in report.utilization
