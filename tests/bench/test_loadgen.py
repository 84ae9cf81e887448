"""`rillet bench`'s runs: its JSON shape and counts against the real server, its verification against a corrupt one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from rillet.bench.loadgen import sweep
from rillet.bench.loadgen.runner import Bound
from rillet.bench.loadgen.workload import Plan, Rpc, Workload
from rillet.client import GenerateOptions
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.v1 import common_pb2, generation_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.conftest import ServerFactory
from tests.doubles import EchoSpeechEngine

FAST = SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0)
SPOKEN = SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.2)
"""For chains: a generation that outlives the chained start written right after it (one that had already ended
would leave nothing to speak: NOT_FOUND UNKNOWN_SOURCE_REQUEST)."""
DISTRIBUTION = {"p50", "p90", "p99", "max", "mean", "count"}


async def serve(make_server: ServerFactory, engine: SyntheticConfig = FAST) -> str:
    server = await make_server([SyntheticEngine(engine), EchoSpeechEngine()])
    return f"127.0.0.1:{server.port}"


async def test_a_concurrency_sweep_counts_every_request_and_token(make_server: ServerFactory) -> None:
    target = await serve(make_server)
    plan = Plan(generate=GenerateOptions(max_tokens=16))
    results = await sweep.run(target, plan, concurrency=[1, 4], bound=Bound(requests=20), warmup=2, connections=2)
    assert results["target"] == target
    assert results["plan"]["workload"] == "text"
    assert results["server_models"][0] == {
        "name": "synthetic-test",
        "engine": "synthetic",
        "is_test_engine": True,
        "is_default": True,
    }
    assert [level["level"] for level in results["levels"]] == [{"concurrency": 1}, {"concurrency": 4}]
    for level in results["levels"]:
        assert (level["requests"], level["ok"], level["lost"], level["failed"], level["errors"]) == (20, 20, 0, 0, [])
        assert level["tokens"] == 20 * 16
        assert level["ttft_ms"].keys() == DISTRIBUTION
        assert level["ttft_ms"]["count"] == 20
        assert level["e2e_ms"]["p50"] <= level["e2e_ms"]["p99"] <= level["e2e_ms"]["max"]
        assert level["ttfa_ms"] is None
        assert level["tokens_per_s"] > 0
        assert level["tokens_per_message"] >= 1
    json.dumps(results)  # all of it serializes


async def test_speech_and_chained_sessions_and_poisson_arrivals(make_server: ServerFactory) -> None:
    target = await serve(make_server)
    speech = await sweep.run(
        target, Plan(workload=Workload.SPEECH, rpc=Rpc.SESSION), concurrency=[2], bound=Bound(requests=6)
    )
    level = speech["levels"][0]
    assert (level["requests"], level["ok"], level["lost"]) == (6, 6, 0)
    assert level["ttfa_ms"]["count"] == 6
    assert level["audio_s"] > 0
    chain = await sweep.run(
        await serve(make_server, SPOKEN),
        Plan(workload=Workload.CHAIN, rpc=Rpc.SESSION, generate=GenerateOptions(max_tokens=8)),
        concurrency=[2],
        bound=Bound(requests=4),
    )
    level = chain["levels"][0]
    assert (level["requests"], level["ok"], level["lost"]) == (8, 8, 0)  # a generation and its synthesis each
    assert level["tokens"] == 4 * 8
    assert level["ttft_ms"]["count"] == level["ttfa_ms"]["count"] == 4
    poisson = await sweep.run(
        target, Plan(generate=GenerateOptions(max_tokens=4)), rates=[500.0], bound=Bound(requests=10)
    )
    level = poisson["levels"][0]
    assert level["level"] == {"rate": 500.0}
    assert (level["requests"], level["ok"], level["tokens"]) == (10, 10, 40)
    assert 1 <= level["max_in_flight"] <= 10


# ---- a server that breaks the stream contract, one way per request --------------------------------------------


def delta(seq: int, tokens: int = 1) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        seq=seq, token_delta=generation_pb2.TokenDelta(text="x " * tokens, token_ids=[1] * tokens)
    )


def finished(seq: int, tokens: int) -> pb.GenerateResponse:
    usage = common_pb2.Usage(output_tokens=tokens)
    return pb.GenerateResponse(
        seq=seq, finished=common_pb2.Finished(reason=common_pb2.FINISH_REASON_LENGTH, usage=usage)
    )


FAULTS: list[tuple[str, list[pb.GenerateResponse] | None]] = [
    ("ok", [delta(0), delta(1), finished(2, 2)]),
    ("seq gap", [delta(0), delta(2), finished(3, 2)]),
    ("no terminal", [delta(0), delta(1)]),
    ("usage disagrees", [delta(0), delta(1), finished(2, 3)]),
    ("after terminal", [delta(0), finished(1, 1), delta(2)]),
    ("error", None),
]


def _queue_full() -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="QUEUE_FULL", domain="rillet.dev"))
    code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    return status_pb2.Status(code=code, message="the queue is full", details=[detail])


QUEUE_FULL = _queue_full()


async def corrupt_server() -> tuple[grpc.aio.Server, int]:
    served = iter(FAULTS)

    async def generate(request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        _, responses = next(served)
        if responses is None:
            await context.abort_with_status(rpc_status.to_status(QUEUE_FULL))
        for response in responses or ():
            yield response

    async def list_models(request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.Model(name="corrupt", is_default=True)])

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            generate, pb.GenerateRequest.FromString, pb.GenerateResponse.SerializeToString
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            list_models, pb.ListModelsRequest.FromString, pb.ListModelsResponse.SerializeToString
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rillet.v1.InferenceService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_a_corrupted_stream_is_reported_lost_with_its_reason() -> None:
    server, port = await corrupt_server()
    try:
        results = await sweep.run(
            f"127.0.0.1:{port}",
            Plan(generate=GenerateOptions(max_tokens=2)),
            concurrency=[1],
            bound=Bound(requests=len(FAULTS)),
            warmup=0,
        )
    finally:
        await server.stop(0)
    level = results["levels"][0]
    assert (level["requests"], level["ok"], level["lost"]) == (6, 1, 4)
    assert level["failed"] == 1
    assert level["errors"] == [
        {"code": "RESOURCE_EXHAUSTED", "reason": "QUEUE_FULL", "count": 1, "sample": "the queue is full"}
    ]
    assert level["lost_reasons"] == {
        "seq 2 where 1 was due": 1,
        "the stream ended without a terminal message": 1,
        "2 tokens received, usage says 3": 1,
        "token_delta (seq 2) after the terminal finished": 1,
    }
    assert level["tokens"] == 2 + 2 + 2 + 2 + 1  # what arrived in order is counted, lost or not
