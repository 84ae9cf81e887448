"""Telemetry CPU per request: N request lifecycles through the server's TelemetryObserver, CPU time per request.

The providers, readers and exporters are the server's own (runtime.Telemetry), exporting OTLP/gRPC to a receiver in
another process that answers without parsing (rillet.bench.tracing's); the Prometheus endpoint is up but not scraped.
Each lifecycle is what a 64-token generation in a session costs the server: request, queued, admitted,
first_output, 64 outputs and finished, inside one RPC span, plus one engine step's batch-size record (the
unthrottled synthetic engine steps about once per request). CPU time, so robust to a busy machine: `loop` is the
calling thread's (the event loop's share), `all` is the process's from the first request to the end of the final
flush (the exporter threads' encoding included), and `exporter process` is the span exporter child's (offload.py),
from start to exit. Modes: off, metrics (OTLP + Prometheus readers), traces (no
metric reader), all.
Run: .venv/bin/python bench/telemetry_cpu.py [--requests 20000] [--modes all] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import subprocess
import sys
import time

from opentelemetry import trace

from rillet.bench.tracing import RECEIVER
from rillet.server.config import TelemetryConfig
from rillet.server.observer import NULL_OBSERVER, Observer, StepReporter
from rillet.server.telemetry.plan import Exports
from rillet.server.telemetry.runtime import Telemetry
from rillet.server.types import (
    Finished,
    FinishReason,
    GenerateSpec,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Start,
    Timings,
    TokenDelta,
    Usage,
)

MODES = {
    "off": Exports(),
    "metrics": Exports(otlp_metrics=True, prometheus=True),
    "traces": Exports(otlp_traces=True),
    "all": Exports(otlp_traces=True, otlp_metrics=True, prometheus=True),
}
MODEL = ModelInfo("synthetic", ModelKind.TEXT_GENERATION, "synthetic", is_test_engine=True)
DELTA = TokenDelta("x", (1,))
RESULT = Finished(FinishReason.LENGTH, Usage(4, 64), Timings(0.0001, 0.002, 0.021, 0.34))


class _Engine:
    name = "synthetic"
    slots = 64
    active = 0

    def __init__(self) -> None:
        self.step_reporter = StepReporter()


def lifecycles(observer: Observer, steps: StepReporter, count: int, tokens: int) -> None:
    for index in range(count):
        request_id = f"r{index}"
        start = Start(request_id, GenerateSpec(prompt="session 1 says", max_tokens=tokens))
        request = observer.request(start)
        request.queued(MODEL, GenerationRequest(request_id, MODEL.name, "session 1 says", tokens), None)
        request.admitted()
        request.first_output()
        for _ in range(tokens):
            request.output(DELTA)
        steps.step(64)
        request.finished(RESULT)


def run(mode: str, endpoint: str, count: int, tokens: int, profile: bool) -> tuple[float, float, float]:
    """µs of CPU per request: the calling thread's, the whole process's, and the span exporter process's."""
    exports = MODES[mode]
    engine = _Engine()
    telemetry: Telemetry | None = None
    observer = NULL_OBSERVER
    if exports.enabled:
        telemetry = Telemetry(TelemetryConfig(otlp_endpoint=endpoint, prometheus_port=0), exports)
        telemetry.watch([engine])
        observer = telemetry.observer
    tracer = telemetry.rpc.tracer if telemetry is not None else None  # the RPC spans' SDK Tracer
    lifecycles(observer, engine.step_reporter, 200, tokens)  # warm-up
    profiler = cProfile.Profile() if profile else None
    process, thread = time.process_time(), time.thread_time()
    with tracer.start_as_current_span("rpc") if tracer is not None else trace.use_span(trace.INVALID_SPAN):
        if profiler is not None:
            profiler.enable()
        lifecycles(observer, engine.step_reporter, count, tokens)
        if profiler is not None:
            profiler.disable()
    thread = time.thread_time() - thread
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if telemetry is not None:
        telemetry.shutdown()  # waits for the span exporter process to export everything and exit
    process = time.process_time() - process
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return thread / count * 1e6, process / count * 1e6, child / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--profile", action="store_true", help="cProfile the lifecycles (calling thread only)")
    args = parser.parse_args()
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(args.requests + 1000))  # the lifecycles come in a burst
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE)
    try:
        assert receiver.stdout is not None
        endpoint = f"http://127.0.0.1:{int(receiver.stdout.readline())}"
        for mode in args.modes:
            loop, process, child = run(mode, endpoint, args.requests, args.tokens, args.profile)
            print(
                f"{mode:8} loop {loop:6.1f}   process {process:6.1f}   exporter process {child:6.1f}  µs/request",
                flush=True,
            )
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
