"""Spans exported over OTLP by a child process, so that their encoding never holds the server's GIL.

The server keeps the SDK's TracerProvider (sampler, ids, OTEL_* variables) and hands each finished, sampled span to
`OffloadedExport` as plain data (spans.SpanData); a thread pickles what is pending every `interval_s` onto the
child's stdin. The child (`python -m rillet.server.telemetry.fastpath.offload`) rebuilds the SDK's ReadableSpans and
exports them with the SDK's BatchSpanProcessor and OTLPSpanExporter (OTEL_BSP_* and OTEL_EXPORTER_OTLP_* apply
there). Encoding a span costs ≈ 50 µs, against ≈ 1 µs to pickle it. On the child's stdin: the endpoint and the
Resource, then lists of SpanData, and flush requests (number, timeout in ms) which `force_flush` ships behind what is
pending; the child flushes its BatchSpanProcessor and answers "number 1|0" on its stdout (its other output goes to
stderr), so a flush returns once the spans are exported.

Invariant: the child lives as long as its stdin is open. It ignores SIGINT and SIGTERM (a Ctrl-C or a signal to the
process group must not kill it before the last spans are out); at end of input it flushes and exits, so a server
that exits, however it does, leaves no child behind, and `shutdown` delivers the last spans. It runs at a lower CPU
priority (nice +10): export is background work, which must not take a core from serving when cores are few; it
catches up when the server is idle, and past MAX_PENDING spans waiting it drops new ones (counted, logged once).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections import deque
from typing import IO, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from rillet.server.telemetry.fastpath.spans import SpanData, span_data

log = logging.getLogger(__name__)

MAX_PENDING = 16384
"""Spans waiting to be shipped beyond which new ones are dropped (the child cannot keep up; logged once)."""


class OffloadedExport(SpanProcessor):
    """A span processor (for the SDK's spans) and a sink (`ship`, for request spans) exporting in a child process."""

    def __init__(self, endpoint: str | None, resource: Resource, *, interval_s: float = 0.1) -> None:
        self._pending: deque[SpanData] = deque()
        self._interval_s = interval_s
        self._dropped = 0
        self._broken = False
        self._sending = threading.Lock()  # one consumer of `_pending` and one writer of the pipe at a time
        self._child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._child.stdin is not None
        assert self._child.stdout is not None
        self._pipe: IO[bytes] = self._child.stdin
        self._write((endpoint, dict(resource.attributes), resource.schema_url))
        self._flushes = itertools.count(1)
        self._answers = threading.Condition()  # guards the three below; notified when the child answers or exits
        self._awaited: set[int] = set()  # the numbers of the flushes being waited for
        self._flushed: dict[int, bool] = {}  # their answers
        self._gone = False  # the child closed its stdout: it exited
        self._listener = threading.Thread(
            target=self._listen, args=(self._child.stdout,), name="rillet-span-flushes", daemon=True
        )
        self._listener.start()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rillet-span-shipper", daemon=True)
        self._thread.start()

    def ship(self, data: SpanData) -> None:
        """Queue a finished span for export (any thread)."""
        if len(self._pending) < MAX_PENDING:
            self._pending.append(data)
            return
        self._dropped += 1
        if self._dropped == 1:
            log.warning("telemetry: the span exporter process falls behind; spans are being dropped")

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.ship(span_data(span))

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._send()

    def _send(self, flush: tuple[int, int] | None = None) -> None:
        """Pickle what is pending onto the child's stdin, then `flush` (a flush request) if given."""
        with self._sending:
            pending = self._pending
            batch = [pending.popleft() for _ in range(len(pending))]
            if batch and not self._broken:
                self._write(batch)
            if flush is not None and not self._broken:
                self._write(flush)

    def _listen(self, answers: IO[bytes]) -> None:
        """Hear the child's answers to flush requests ("number 1|0"), until it exits."""
        with answers:
            for line in answers:
                number, ok = line.split()
                with self._answers:
                    if int(number) in self._awaited:
                        self._flushed[int(number)] = ok == b"1"
                        self._answers.notify_all()
        with self._answers:
            self._gone = True
            self._answers.notify_all()

    def _write(self, message: Any) -> None:
        try:
            pickle.dump(message, self._pipe, protocol=pickle.HIGHEST_PROTOCOL)
            self._pipe.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._broken = True
            log.exception("telemetry: the span exporter process is gone; spans are no longer exported")

    def shutdown(self) -> None:
        """Ship what is pending and wait for the child to export it and exit."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join()
        self._send()
        with contextlib.suppress(OSError):
            self._pipe.close()
        try:
            self._child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.warning("telemetry: the span exporter process did not finish in 60 s; killed")
            self._child.kill()
            self._child.wait()
        self._listener.join()  # the child's stdout ends with it

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Ship what is pending and wait until the child has exported it (False: not in time, or it could not)."""
        if self._stopped.is_set():  # shut down: the child exported everything shipped before, and is gone
            return not self._pending and not self._broken
        number = next(self._flushes)
        with self._answers:
            self._awaited.add(number)
        try:
            self._send((number, timeout_millis))
            with self._answers:
                self._answers.wait_for(
                    lambda: number in self._flushed or self._gone or self._broken, timeout_millis / 1000
                )
                return self._flushed.pop(number, False)
        finally:
            with self._answers:
                self._awaited.discard(number)


def main() -> None:
    """The child: rebuild the spans read from stdin and export them with the SDK's OTLP exporter."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(os, "nice"):  # POSIX
        os.nice(10)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the answers to flush requests go to the parent
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # and whatever else would be printed, to stderr
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from rillet.server.telemetry.fastpath.spans import into

    source = sys.stdin.buffer
    endpoint, attributes, schema_url = pickle.load(source)
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    sink = into(processor, Resource(attributes, schema_url))
    while True:
        try:
            message: list[SpanData] | tuple[int, int] = pickle.load(source)
        except EOFError:
            break
        if isinstance(message, tuple):  # a flush request: (number, timeout in ms)
            number, timeout_millis = message
            exported = processor.force_flush(timeout_millis)
            answers.write(f"{number} {int(exported)}\n".encode())
            answers.flush()
            continue
        for data in message:
            sink(data)
    processor.shutdown()  # type: ignore[no-untyped-call]  # exports what is left


if __name__ == "__main__":
    main()
