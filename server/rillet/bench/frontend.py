"""Frontend benchmark: does Rillet keep up with a GPU engine? The trtllm engine over the TensorRT-LLM TEST DOUBLE.

The double's simulated executor produces one token for each of 256 running sequences every 12.8 ms: 20,000 tokens/s,
what a GPU serving 256 streams at 78 tokens/s each would produce. Rillet (the real trtllm engine module, session,
scheduler and gRPC transport) runs in its own process, started by bench/serve_trtllm_double.py; a client keeps 256 one-
shot Generate streams open (closed loop; each stream's first request shorter by its index, so restarts spread evenly)
and checks every stream: `seq` contiguous from 0, exactly one Finished and last, LENGTH, and the token ids received =
usage.output_tokens = the request's max_tokens. Reported: tokens the double produced vs tokens delivered (all of them,
or the run failed); the steady rate (tokens that arrived in the first `--seconds`, while all 256 streams were busy: the
headline), the overall rate (the whole load window, whose tail is streams finishing their last request), messages/s, and
the server process's CPU per token, with the double's own step loop (measured by its thread CPU time) subtracted: that
is the frontend's cost. This is NOT a GPU number: no model runs.

The client is Go by default (client_sdk/go/internal/streamload, ~13 µs of CPU per token), so that on a small machine
the server is not starved of a core; `--client python` runs grpc.aio client processes instead (~50 µs per token).

Run: .venv/bin/python bench/bench_frontend.py [--streams 256] [--tokens-per-second 20000] [--seconds 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.bench import streamload
from rillet.bench.procs import cpu_seconds, free_port, load_average
from rillet.bench.results import RESULTS, ROOT, stamp
from rillet.bench.stats import median
from rillet.bench.wire import Stream, drain
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, inference_service_pb2_grpc


@dataclass
class ClientResult:
    """What one client process saw."""

    requests: int = 0
    tokens: int = 0
    messages: int = 0
    bad_streams: int = 0
    first_error: str = ""
    window_tokens: int = 0  # tokens that arrived between `started` and `started + seconds` (all streams busy)
    cpu_seconds: float = 0.0  # the client's own CPU while it ran its streams
    started: float = 0.0  # time.perf_counter(): CLOCK_MONOTONIC, one clock for every process (the Go client's too)
    ended: float = 0.0  # ... and when the last one finished


def client_main(port: int, streams: int, seconds: float, max_tokens: int, out: Any) -> None:
    out.put(asdict(asyncio.run(_client(port, streams, seconds, max_tokens))))


async def _client(port: int, streams: int, seconds: float, max_tokens: int) -> ClientResult:
    result = ClientResult()
    cpu_before = time.process_time()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        result.started = time.perf_counter()
        stop_at = result.started + seconds

        async def stream(index: int) -> None:
            # The first request's length is staggered so that the streams' restarts spread evenly over time (a
            # steady state) instead of all of them finishing and restarting in one burst.
            length = 1 + index * max_tokens // streams
            while time.perf_counter() < stop_at:
                params = generation_pb2.GenerateParams(
                    text=f"stream {index}: the river runs quietly past the mill ",
                    max_tokens=length,
                    sampling=generation_pb2.SamplingParams(temperature=0.0),
                )
                request = Stream(f"stream {index}")
                counted = 0

                def window(read: Stream) -> bool:
                    """Count the tokens that arrive while every stream is busy (before `stop_at`)."""
                    nonlocal counted
                    if read.last_at is not None and read.last_at < stop_at:
                        result.window_tokens += read.tokens - counted
                    counted = read.tokens
                    return False

                await drain(stub.Generate(inference_service_pb2.GenerateRequest(params=params)), request, window)
                result.requests += 1
                result.tokens += request.tokens
                result.messages += request.next_seq  # every message, the terminal one included
                problem = request.lost or (request.error.key if request.error is not None else "")
                finished = request.finished
                if not problem and finished is not None:
                    usage = finished.usage.output_tokens
                    if finished.reason != common_pb2.FINISH_REASON_LENGTH or usage != length:
                        problem = f"finish {finished.reason}, {request.tokens} ids, usage {usage}"
                if problem:
                    result.bad_streams += 1
                    result.first_error = result.first_error or problem
                if request.error is not None:
                    return  # the call failed: this stream stops
                length = max_tokens

        outcomes = await asyncio.gather(*(stream(i) for i in range(streams)), return_exceptions=True)
        result.ended = time.perf_counter()
    result.cpu_seconds = time.process_time() - cpu_before
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.bad_streams += 1
            result.first_error = result.first_error or repr(outcome)
    return result


def run_clients(opts: argparse.Namespace, port: int) -> list[ClientResult]:
    """Run the load: the Go client (one process, `--clients` connections) or `--clients` Python processes."""
    if opts.client == "go":
        flags = {"streams": opts.streams, "conns": opts.clients, "seconds": opts.seconds, "max_tokens": opts.max_tokens}
        command = streamload.command(f"127.0.0.1:{port}", **flags)
        done = subprocess.run(command, capture_output=True, text=True, timeout=opts.seconds + 120, check=True)
        reported = json.loads(done.stdout)
        fields = ClientResult.__dataclass_fields__
        return [ClientResult(**{k: v for k, v in reported.items() if k in fields})]  # the gaps are not used here
    queue: Any = multiprocessing.get_context("spawn").Queue()
    per_client = opts.streams // opts.clients
    clients = [
        multiprocessing.get_context("spawn").Process(
            target=client_main, args=(port, per_client, opts.seconds, opts.max_tokens, queue)
        )
        for _ in range(opts.clients)
    ]
    for client in clients:
        client.start()
    results = [ClientResult(**queue.get(timeout=opts.seconds + 120)) for _ in clients]
    for client in clients:
        client.join(timeout=30)
    return results


def wait_serving(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                return False
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        if asyncio.run(check()):
            return
        time.sleep(0.2)
    raise RuntimeError("the server did not become SERVING")


@dataclass
class Run:
    """One measured run."""

    seconds: float
    produced_tokens: int
    produced_tokens_per_s: float
    delivered_tokens: int
    delivered_tokens_per_s: float
    steady_tokens_per_s: float  # delivered while every stream was busy (the first `seconds`), the headline
    target_tokens_per_s: float
    messages_per_s: float
    tokens_per_message: float
    requests: int
    bad_streams: int
    first_error: str
    server_cpu_s: float
    double_cpu_s: float
    frontend_cpu_us_per_token: float
    server_cpu_us_per_token: float
    client_cpu_us_per_token: float
    largest_batch: int
    executor_steps_per_s: float  # the double's step rate over the window: the target's when the loop kept up
    target_steps_per_s: float
    load_average_before: float
    load_average_after: float


def one_run(opts: argparse.Namespace, index: int) -> Run:
    port = free_port()
    stats = RESULTS / f".frontend_double_stats_{os.getpid()}_{index}.json"
    step = opts.streams / opts.tokens_per_second
    env = {
        **os.environ,
        "RILLET_TRTLLM__MODEL": "rillet-double/bench",
        "RILLET_TRTLLM__MAX_BATCH_SIZE": str(opts.streams),
        "RILLET_TRTLLM__MAX_SEQ_LEN": str(opts.max_tokens + 64),
        "RILLET_SCHEDULER__MAX_QUEUE": str(opts.streams),
        "RILLET_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "rillet.bench.trtllm_double",
        "--step-seconds",
        f"{step:.6f}",
        "--stats-out",
        str(stats),
        "--",
        "serve",
        "--text-engine",
        "trtllm",
        "--speech-engine",
        "none",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        wait_serving(port, server)
        load_before = load_average()
        cpu_before = cpu_seconds(server.pid)
        results = run_clients(opts, port)
        cpu_after = cpu_seconds(server.pid)
        # The load window: from the first stream opened to the last one finished (process start-up excluded).
        elapsed = max(r.ended for r in results) - min(r.started for r in results)
        load_after = load_average()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    double = json.loads(stats.read_text())
    stats.unlink()
    delivered = sum(r.tokens for r in results)
    messages = sum(r.messages for r in results)
    server_cpu = cpu_after - cpu_before
    produced = double["tokens_produced"] - 2  # the warm-up request's two tokens went to no client
    frontend_cpu = server_cpu - double["executor_cpu_seconds"]
    return Run(
        seconds=round(elapsed, 2),
        produced_tokens=produced,
        produced_tokens_per_s=round(produced / elapsed),
        delivered_tokens=delivered,
        delivered_tokens_per_s=round(delivered / elapsed),
        steady_tokens_per_s=round(sum(r.window_tokens for r in results) / opts.seconds),
        target_tokens_per_s=opts.tokens_per_second,
        messages_per_s=round(messages / elapsed),
        tokens_per_message=round(delivered / max(messages, 1), 2),
        requests=sum(r.requests for r in results),
        bad_streams=sum(r.bad_streams for r in results),
        first_error=next((r.first_error for r in results if r.first_error), ""),
        server_cpu_s=round(server_cpu, 2),
        double_cpu_s=round(double["executor_cpu_seconds"], 2),
        frontend_cpu_us_per_token=round(frontend_cpu / max(delivered, 1) * 1e6, 1),
        server_cpu_us_per_token=round(server_cpu / max(delivered, 1) * 1e6, 1),
        client_cpu_us_per_token=round(sum(r.cpu_seconds for r in results) / max(delivered, 1) * 1e6, 1),
        largest_batch=double["largest_batch"],
        executor_steps_per_s=round(double["steps"] / elapsed, 1),
        target_steps_per_s=round(1 / step, 1),
        load_average_before=load_before,
        load_average_after=load_after,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=256, help="concurrent streams (= the double's batch)")
    parser.add_argument("--tokens-per-second", type=float, default=20_000.0, help="what the double produces in all")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration of one run")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per request")
    parser.add_argument("--clients", type=int, default=2, help="connections (Go) or processes (Python) for the streams")
    parser.add_argument(
        "--client",
        choices=("go", "python"),
        default="go",
        help="go: one Go process (client_sdk/go/internal/streamload), a few µs of CPU per message, so the server is "
        "not starved of the second core; python: grpc.aio processes, ~50 µs per message",
    )
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    runs = []
    if opts.client == "go":
        streamload.binary()  # built before the first run
    for index in range(opts.runs):
        run = one_run(opts, index)
        print(json.dumps(asdict(run)), flush=True)
        runs.append(run)
    date = stamp()
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "frontend over the TensorRT-LLM test double (no GPU, no model)",
        "date": date,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "options": vars(opts),
        "runs": [asdict(r) for r in runs],
    }
    (RESULTS / f"frontend_{date}.json").write_text(json.dumps(document, indent=2) + "\n")
    medians = {
        key: median(getattr(r, key) for r in runs)
        for key in (
            "produced_tokens_per_s",
            "delivered_tokens_per_s",
            "steady_tokens_per_s",
            "messages_per_s",
            "frontend_cpu_us_per_token",
            "server_cpu_us_per_token",
            "client_cpu_us_per_token",
        )
    }
    print(json.dumps({"median": medians}))


if __name__ == "__main__":
    main()
