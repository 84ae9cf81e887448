"""Pictures for the README from real exported telemetry: a dashboard rendered from scraped metrics, and one trace.

No Grafana or Jaeger runs here, so this draws what they would show, from the same data: it starts `rillet serve`
(synthetic TEST engine for text, piper for speech) exporting OTLP/gRPC to a receiver in this script and serving
Prometheus, drives a load that rises from 16 to 64 sessions (with speech, a few errors and rejected messages),
scrapes /metrics every 2 s and evaluates the dashboard's PromQL by hand (rates over a window, histogram_quantile
by linear interpolation within a bucket, as Prometheus does). The trace is one client-side "pipeline turn" and
every span the server exported for it, drawn as a waterfall with its events and links.

    .venv/bin/python bench/render_telemetry.py   # writes docs/images/telemetry-dashboard.png and -trace.png
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from rillet.bench.procs import served_ports
from rillet.bench.results import ROOT
from rillet.client import Client, RilletError, TokenDelta

IMAGES = ROOT / "docs" / "images"
Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TraceRow = tuple[str, str, int, int, str, list[tuple[str, int]], list[str], str]
"""A span to draw: id, parent, start ns, end ns, name, events, link targets, side (client, server, request)."""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextlib.asynccontextmanager
async def started() -> AsyncIterator[tuple[Receiver, int, int]]:
    receiver = Receiver()
    otlp = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, otlp)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, otlp)  # type: ignore[no-untyped-call]
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    await otlp.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "piper", "--otlp-endpoint", f"http://127.0.0.1:{otlp_port}", "--prometheus-port", "0",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RILLET_SYNTHETIC__SLOTS": "32", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )  # fmt: skip
    assert process.stderr is not None
    port, prometheus = await served_ports(process.stderr, 120)
    assert prometheus is not None
    drain = asyncio.create_task(process.stderr.read())
    try:
        yield receiver, port, prometheus
    finally:
        process.terminate()
        await process.wait()
        drain.cancel()
        await otlp.stop(None)


def scrape(port: int) -> Sample:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def load(port: int, sessions: int, stop_at: float) -> None:
    """`sessions` sessions of back-to-back generations; every fourth also speaks once in a while; a few errors."""

    async def one(client: Client, index: int) -> None:
        async with client.session() as session:
            turn = 0
            while time.monotonic() < stop_at:
                turn += 1
                stream = await session.generate(f"session {index} turn {turn}", max_tokens=48)
                await stream.collect()
                if index % 8 == 0 and turn % 3 == 0:
                    await (await session.synthesize("A short answer, spoken.")).collect()
                if index % 16 == 1 and turn % 5 == 0:
                    with contextlib.suppress(RilletError):
                        await (await session.generate("x", model="missing-model")).collect()
                    await session.cancel("gone")  # answered with `rejected`

    async with Client.connect(f"127.0.0.1:{port}") as client:
        await asyncio.gather(*(one(client, i) for i in range(sessions)))


def total(sample: Sample, name: str, where: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
    return sum(v for (n, labels), v in sample.items() if n == name and where(dict(labels)))


def quantile(q: float, before: Sample, after: Sample, name: str) -> float | None:
    """histogram_quantile(q, sum by (le) (increase(name_bucket[window]))), Prometheus' interpolation."""
    buckets: dict[float, float] = {}
    for (n, labels), value in after.items():
        if n == f"{name}_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + value - before.get((n, labels), 0.0)
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return None


def render_dashboard(samples: list[tuple[float, Sample]], path: Path) -> None:
    window = 3  # scrapes (6 s): the rate window
    figure, axes = plt.subplots(3, 3, figsize=(16, 11))
    figure.suptitle("Rillet — the Grafana dashboard's queries, evaluated on metrics scraped from a real server "
                    "(synthetic TEST engine, piper voice)", fontsize=12)  # fmt: skip
    times = [t - samples[0][0] for t, _ in samples[window:]]
    pairs = [(samples[i - window], samples[i]) for i in range(window, len(samples))]

    def series(compute: Callable[[float, Sample, Sample], float | None]) -> list[float]:
        return [float("nan") if (v := compute(t1 - t0, a, b)) is None else v for (t0, a), (t1, b) in pairs]

    def panel(ax: Any, title: str, lines: dict[str, list[float]], unit: str) -> None:
        for label, values in lines.items():
            ax.plot(times, values, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("s")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    def quantiles(name: str) -> dict[str, list[float]]:
        def ms(q: float) -> Callable[[float, Sample, Sample], float | None]:
            return lambda _, a, b: None if (v := quantile(q, a, b, name)) is None else v * 1000

        return {f"p{int(q * 100)}": series(ms(q)) for q in (0.5, 0.9, 0.99)}

    def rate(name: str, where: Callable[[dict[str, str]], bool] = lambda _: True) -> list[float]:
        return series(lambda dt, a, b: (total(b, name, where) - total(a, name, where)) / dt)

    def gauge(name: str) -> list[float]:
        return [total(b, name) for (_, _), (_, b) in pairs]

    panel(axes[0][0], "Time to first token", quantiles("gen_ai_server_time_to_first_token_seconds"), "ms")
    panel(axes[0][1], "Inter-token latency (time per output token)",
          quantiles("gen_ai_server_time_per_output_token_seconds"), "ms")  # fmt: skip
    output = rate("rillet_server_token_usage_total", lambda labels: labels.get("gen_ai_token_type") == "output")
    panel(axes[0][2], "Tokens per second (output)", {"output tokens/s": output}, "tokens/s")
    panel(axes[1][0], "Queue: requests waiting", {"waiting": gauge("rillet_server_queued_requests")}, "requests")
    panel(axes[1][1], "Errors by code (and rejected messages)", {
        "NOT_FOUND /s": rate("rillet_server_request_errors_total", lambda labels: labels["error_type"] == "NOT_FOUND"),
        "rejected /s": rate("rillet_server_rejected_messages_total"),
    }, "per second")  # fmt: skip
    panel(axes[1][2], "Engine slots in use (synthetic)", {
        "used": [total(b, "rillet_engine_slots_used", lambda labels: labels["rillet_engine"] == "synthetic")
                 for _, (_, b) in pairs],
        "slots": [total(b, "rillet_engine_slots_limit", lambda labels: labels["rillet_engine"] == "synthetic")
                  for _, (_, b) in pairs],
    }, "slots")  # fmt: skip

    def mean_batch(_: float, a: Sample, b: Sample) -> float:
        steps = total(b, "rillet_engine_batch_size_count") - total(a, "rillet_engine_batch_size_count")
        return (total(b, "rillet_engine_batch_size_sum") - total(a, "rillet_engine_batch_size_sum")) / max(steps, 1)

    batch = series(mean_batch)
    panel(axes[2][0], "Batch size per engine step (mean)", {"synthetic": batch}, "sequences")
    panel(axes[2][1], "Time to first audio (piper)", quantiles("rillet_server_time_to_first_audio_seconds"), "ms")
    panel(axes[2][2], "Active sessions and requests", {
        "sessions": gauge("rillet_server_active_sessions"), "requests": gauge("rillet_server_active_requests"),
    }, "count")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def render_trace(
    spans: list[tuple[str, str, int, int, str, list[tuple[str, int]], list[str], str]], path: Path
) -> None:
    """A waterfall: (id, parent, start ns, end ns, name, events, link targets, side)."""
    by_id = {s[0]: s for s in spans}

    def depth(span_id: str) -> int:
        parent = by_id[span_id][1]
        return 0 if parent not in by_id else 1 + depth(parent)

    ordered = sorted(spans, key=lambda s: s[2])
    origin = min(s[2] for s in spans)
    figure, ax = plt.subplots(figsize=(15, 0.55 * len(ordered) + 1.6))
    rows = {s[0]: i for i, s in enumerate(ordered)}
    for span_id, _, start, end, name, events, links, side in ordered:
        row = rows[span_id]
        x0, x1 = (start - origin) / 1e6, (end - origin) / 1e6
        color = {"client": "#7a9cc6", "server": "#e39b5b", "request": "#6bb36b"}[side]
        ax.barh(row, max(x1 - x0, 0.3), left=x0, color=color, edgecolor="black", height=0.6)
        ax.text(x0, row - 0.38, "  " * depth(span_id) + name, fontsize=8, va="bottom")
        for event, at in events:
            x = (at - origin) / 1e6
            ax.plot([x, x], [row - 0.3, row + 0.3], color="black", lw=1)
            ax.text(x, row + 0.32, event.rsplit(".", 1)[-1], fontsize=7, rotation=30, va="top")
        for target in links:
            if target in rows:
                ax.annotate("", xy=((by_id[target][2] - origin) / 1e6, rows[target]), xytext=(x0, row),
                            arrowprops={"arrowstyle": "->", "linestyle": "--", "color": "gray"})  # fmt: skip
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the pipeline turn began")
    ax.set_title("One trace, as exported: client spans (blue, the SDK), server RPC spans (orange), request spans "
                 "(green); ticks are span events, dashed arrows are links", fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=90)


async def trace_one_turn(port: int, receiver: Receiver) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("pipeline")
    async with Client.connect(f"127.0.0.1:{port}", tracing=True, tracer_provider=provider) as client:
        with tracer.start_as_current_span("pipeline turn") as turn:
            await client.generate("Summarize the call:", max_tokens=12).collect()
            async with client.session() as session:
                answer = await session.generate("The answer is", max_tokens=16)
                speech = await session.synthesize(text_from=answer)
                async for event in answer:
                    assert isinstance(event, TokenDelta) or event.reason is not None
                await speech.collect()
                await session.close()
    trace_id = turn.get_span_context().trace_id
    await asyncio.sleep(1.0)  # the server's batch processor exports every 100 ms
    spans: list[TraceRow] = []
    for s in exporter.get_finished_spans():
        parent = f"{s.parent.span_id:016x}" if s.parent else ""
        side = "client"
        spans.append((f"{s.context.span_id:016x}", parent, s.start_time or 0, s.end_time or 0, s.name, [], [], side))
    for got in receiver.spans:
        if int.from_bytes(got.trace_id) != trace_id:
            continue
        side = "server" if got.kind == Span.SPAN_KIND_SERVER else "request"
        events = [(e.name, e.time_unix_nano) for e in got.events]
        links = [link.span_id.hex() for link in got.links]
        spans.append((got.span_id.hex(), got.parent_span_id.hex(), got.start_time_unix_nano, got.end_time_unix_nano,
                      got.name, events, links, side))  # fmt: skip
    render_trace(spans, IMAGES / "telemetry-trace.png")


async def run() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    async with started() as (receiver, port, prometheus):
        await trace_one_turn(port, receiver)
        samples: list[tuple[float, Sample]] = []
        begin = time.monotonic()
        end = begin + 55
        tasks = [asyncio.create_task(load(port, 16, end))]  # 16 sessions, then 64 from 20 s on
        while time.monotonic() < end + 6:
            if len(tasks) == 1 and time.monotonic() > begin + 20:
                tasks.append(asyncio.create_task(load(port, 48, end)))
            samples.append((time.monotonic(), await asyncio.to_thread(scrape, prometheus)))
            await asyncio.sleep(2.0)
        await asyncio.gather(*tasks)
    render_dashboard(samples, IMAGES / "telemetry-dashboard.png")
    print(f"wrote {IMAGES / 'telemetry-dashboard.png'} and {IMAGES / 'telemetry-trace.png'}")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
