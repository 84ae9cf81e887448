"""Spans as plain data (SpanData): how request spans are recorded, and how every span reaches its exporter.

A request span (RequestTracer) is sampled and given its ids by the TracerProvider's own sampler and id generator,
as the SDK's Tracer does, but is recorded as plain values and handed to a sink when it ends (what that skips of the
SDK, and why: fastpath/__init__.py). Where spans are exported (offload.py's child process, or a test's span
processor) `into` rebuilds the SDK's ReadableSpan for the SDK's own exporters. RPC spans stay SDK spans (they are
made current for the call); `span_data` turns them into the same plain data. Request spans are never made current:
nothing has them as its parent but a chained synthesis's link, which takes their ids.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

Attributes = dict[str, Any]


class SpanData(NamedTuple):
    """A finished, sampled span in plain values (picklable, cheap to build)."""

    name: str
    trace_id: int
    span_id: int
    trace_flags: int
    trace_state: str  # the W3C tracestate header ("" when empty)
    parent: tuple[int, bool] | None  # the parent's span id (same trace) and whether it is remote
    kind: int  # SpanKind's value
    start: int  # ns since the epoch
    end: int
    attributes: Attributes
    events: list[tuple[str, int, Attributes | None]]  # name, time, attributes
    links: list[tuple[int, int, int, Mapping[str, Any] | None]]  # trace id, span id, trace flags, attributes
    status: tuple[int, str | None]  # StatusCode's value, description
    scope: tuple[str, str | None, str | None]  # instrumentation scope: name, version, schema URL


SpanSink = Callable[[SpanData], None]
"""Where finished spans go; called on the thread that ended the span, so quick."""

_UNSET: tuple[int, str | None] = (StatusCode.UNSET.value, None)
_FLAGS = {
    0: TraceFlags(TraceFlags.SAMPLED),
    TraceFlags.RANDOM_TRACE_ID: TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID),
}
"""A sampled span's trace flags, by whether its trace id is random (W3C level 2), as the SDK's Tracer sets them."""


def span_data(span: ReadableSpan) -> SpanData:
    """The plain data of an SDK span."""
    context, parent, scope = span.context, span.parent, span.instrumentation_scope
    assert context is not None  # an SDK Tracer's spans have one
    assert scope is not None
    return SpanData(
        span.name,
        context.trace_id,
        context.span_id,
        context.trace_flags,
        context.trace_state.to_header(),
        None if parent is None else (parent.span_id, parent.is_remote),
        span.kind.value,
        span.start_time or 0,
        span.end_time or 0,
        dict(span.attributes or {}),
        [(e.name, e.timestamp, dict(e.attributes) if e.attributes else None) for e in span.events],
        [_link(link) for link in span.links],
        (span.status.status_code.value, span.status.description),
        (scope.name, scope.version, scope.schema_url),
    )


def _link(link: Link) -> tuple[int, int, int, Mapping[str, Any] | None]:
    context = link.context
    return (context.trace_id, context.span_id, context.trace_flags, dict(link.attributes) if link.attributes else None)


@functools.cache
def _scope(name: str, version: str | None, schema_url: str | None) -> InstrumentationScope:
    return InstrumentationScope(name, version, schema_url)


def readable(data: SpanData, resource: Resource) -> ReadableSpan:
    """The SDK's ReadableSpan of `data`, for the SDK's span processors and exporters."""
    state = TraceState.from_header([data.trace_state]) if data.trace_state else None
    parent = None
    if data.parent is not None:
        span_id, remote = data.parent
        parent = SpanContext(data.trace_id, span_id, remote, TraceFlags(data.trace_flags))
    return ReadableSpan(
        data.name,
        SpanContext(data.trace_id, data.span_id, False, TraceFlags(data.trace_flags), state),
        parent,
        resource,
        data.attributes,
        [Event(name, attributes, timestamp) for name, timestamp, attributes in data.events],
        [Link(SpanContext(t, s, False, TraceFlags(f)), attributes) for t, s, f, attributes in data.links],
        SpanKind(data.kind),
        status=Status(StatusCode(data.status[0]), data.status[1]),
        start_time=data.start,
        end_time=data.end,
        instrumentation_scope=_scope(*data.scope),
    )


def into(processor: SpanProcessor, resource: Resource) -> SpanSink:
    """A sink handing every span to `processor` as a ReadableSpan of `resource`."""

    def sink(data: SpanData) -> None:
        processor.on_end(readable(data, resource))

    return sink


class RequestSpan:
    """A sampled request span being recorded: plain values until `end` hands them to the sink, once."""

    __slots__ = ("_attributes", "_events", "_links", "_name", "_parent", "_start", "_tracer", "context")

    def __init__(
        self,
        tracer: RequestTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Attributes,
        links: Sequence[Link],
        start: int,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self.context = context
        self._parent = None if parent is None else (parent.span_id, parent.is_remote)
        self._attributes = attributes
        self._links: list[tuple[int, int, int, Mapping[str, Any] | None]] = [
            (link.context.trace_id, link.context.span_id, link.context.trace_flags, link.attributes) for link in links
        ]  # a link's attributes are immutable (opentelemetry.trace.Link)
        self._events: list[tuple[str, int, Attributes | None]] = []
        self._start = start

    def add_event(self, name: str) -> None:
        self._events.append((name, time.time_ns(), None))

    def end(self, attributes: Attributes, status: tuple[StatusCode, str] | None = None) -> None:
        """End the span with `attributes` added and, when given, `status` (its code and description)."""
        self._attributes.update(attributes)
        context, tracer = self.context, self._tracer
        state = context.trace_state
        tracer.sink(
            SpanData(
                self._name,
                context.trace_id,
                context.span_id,
                context.trace_flags,
                state.to_header() if state else "",
                self._parent,
                SpanKind.INTERNAL.value,
                self._start,
                time.time_ns(),
                self._attributes,
                self._events,
                self._links,
                _UNSET if status is None else (status[0].value, status[1]),
                tracer.scope,
            )
        )


class RequestTracer:
    """Starts request spans (kind INTERNAL) as the SDK's Tracer would: `provider`'s sampler and id generator.

    Only sampled spans are recorded (`start` returns None for the others: the SDK exports only sampled spans).
    """

    def __init__(self, provider: TracerProvider, scope: InstrumentationScope, sink: SpanSink) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self.scope = (scope.name, scope.version, scope.schema_url)
        self.sink = sink

    def start(
        self,
        name: str,
        context: Context,
        sampling: Attributes,
        attributes: Attributes,
        links: Sequence[Link],
        start: int,
    ) -> RequestSpan | None:
        """A span `name`, child of the span current in `context`, begun at `start` (ns since the epoch).

        The sampler sees `sampling` (the attributes the conventions give samplers at creation, not changed here);
        the span has those the sampler returns and `attributes` (taken, not copied).
        """
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id, flags = parent.trace_id, _FLAGS[parent.trace_flags & TraceFlags.RANDOM_TRACE_ID]
        else:
            parent, trace_id = None, self._ids.generate_trace_id()
            flags = _FLAGS[TraceFlags.RANDOM_TRACE_ID if self._ids.is_trace_id_random() else 0]
        result = self._sampler.should_sample(context, trace_id, name, SpanKind.INTERNAL, sampling, links)
        if result.decision is not Decision.RECORD_AND_SAMPLE:
            return None
        attributes.update(result.attributes)
        ids = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, result.trace_state)
        return RequestSpan(self, name, ids, parent, attributes, links, start)
