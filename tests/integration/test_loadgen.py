"""`rillet bench`: its JSON shape and counts against the real server, and its verification against a corrupt one."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rillet.client import GenerateOptions
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.loadgen import bench
from rillet.server.loadgen.runner import Bound
from rillet.server.loadgen.workload import Plan, Rpc, Workload
from rillet.v1 import common_pb2, generation_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.conftest import ServerFactory
from tests.doubles import EchoSpeechEngine

FAST = SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0)
DISTRIBUTION = {"p50", "p90", "p99", "max", "mean", "count"}


async def serve(make_server: ServerFactory) -> str:
    server = await make_server([SyntheticEngine(FAST), EchoSpeechEngine()])
    return f"127.0.0.1:{server.port}"


async def test_a_concurrency_sweep_counts_every_request_and_token(make_server: ServerFactory) -> None:
    target = await serve(make_server)
    plan = Plan(generate=GenerateOptions(max_tokens=16))
    results = await bench.run(target, plan, concurrency=[1, 4], bound=Bound(requests=20), warmup=2, connections=2)
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
        assert (level["requests"], level["ok"], level["lost"], level["errors"]) == (20, 20, 0, {})
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
    speech = await bench.run(
        target, Plan(workload=Workload.SPEECH, rpc=Rpc.SESSION), concurrency=[2], bound=Bound(requests=6)
    )
    level = speech["levels"][0]
    assert (level["requests"], level["ok"], level["lost"]) == (6, 6, 0)
    assert level["ttfa_ms"]["count"] == 6
    assert level["audio_s"] > 0
    chain = await bench.run(
        target,
        Plan(workload=Workload.CHAIN, rpc=Rpc.SESSION, generate=GenerateOptions(max_tokens=8)),
        concurrency=[2],
        bound=Bound(requests=4),
    )
    level = chain["levels"][0]
    assert (level["requests"], level["ok"], level["lost"]) == (8, 8, 0)  # a generation and its synthesis each
    assert level["tokens"] == 4 * 8
    assert level["ttft_ms"]["count"] == level["ttfa_ms"]["count"] == 4
    poisson = await bench.run(
        target, Plan(generate=GenerateOptions(max_tokens=4)), rates=[500.0], bound=Bound(requests=10)
    )
    level = poisson["levels"][0]
    assert level["level"] == {"rate": 500.0}
    assert (level["requests"], level["ok"], level["tokens"]) == (10, 10, 40)
    assert 1 <= level["max_in_flight"] <= 10


async def test_the_cli_writes_json_and_a_plot(make_server: ServerFactory, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = await serve(make_server)
    output = tmp_path / "run.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "bench", "--target", target, "--concurrency", "1,2",
        "--requests", "6", "--max-tokens", "5", "--warmup", "0", "--no-progress", "--output", str(output),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    results = json.loads(output.read_text())
    assert [lvl["tokens"] for lvl in results["levels"]] == [30, 30]
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"c=2" in stdout


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


async def corrupt_server() -> tuple[grpc.aio.Server, int]:
    served = iter(FAULTS)

    async def generate(request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        _, responses = next(served)
        if responses is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
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
        results = await bench.run(
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
    assert level["errors"] == {"RESOURCE_EXHAUSTED": 1}
    assert level["lost_reasons"] == {
        "seq 2 where 1 was due": 1,
        "stream ended without a terminal message": 1,
        "2 tokens received, usage says 3": 1,
        "message after the terminal message": 1,
    }
    assert level["tokens"] == 2 + 2 + 2 + 2 + 1  # what arrived in order is counted, lost or not
