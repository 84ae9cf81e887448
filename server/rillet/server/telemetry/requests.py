"""One span and one set of measurements per logical request, heard through the session's RequestObserver hook.

The span (kind INTERNAL, GenAI conventions v1.41.0, see semconv.py) is named `{gen_ai.operation.name}
{gen_ai.request.model}` and starts when the start message arrived. Its parent is the request's own W3C trace
context when the message carries a valid one (so requests of one session can belong to different traces), else the
context current when the start arrived: the RPC span of the call carrying the session (telemetry/rpc.py makes it
current in the handler's task, whose context the session's tasks inherit). It links to that RPC span either way,
and a chained synthesis links to the generation it speaks.

Cost: nothing per output unless content capture is on; per request a span recorded as plain data
(fastpath/spans.py), two or three events, and dict updates for its measurements (instruments.py): ≈ 20 µs of the
event loop's time. Observer methods never raise (the hook's contract): a failure is logged once and telemetry goes
on.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rillet.server.errors import RilletError, clip
from rillet.server.observer import RequestObserver
from rillet.server.telemetry import semconv as sc
from rillet.server.telemetry.fastpath.histograms import attributes_of
from rillet.server.telemetry.fastpath.spans import RequestSpan, RequestTracer
from rillet.server.telemetry.instruments import REQUEST_KEY, Instruments
from rillet.server.types import (
    AudioChunk,
    EngineRequest,
    Finished,
    GenerateSpec,
    GenerationRequest,
    ModelInfo,
    Start,
    SynthesisRequest,
    TokenDelta,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_W3C = TraceContextTextMapPropagator()
_RPC_LINK = {sc.RILLET_LINK_KIND: "rpc"}
_SOURCE_LINK = {sc.RILLET_LINK_KIND: "text_source"}
_UNROUTED_PROVIDER = "_OTHER"
"""gen_ai.provider.name of a request that failed before it was routed to an engine."""
_reported: set[str] = set()


def _guarded(method: Callable[P, None]) -> Callable[P, None]:
    """The observer method, made unable to raise: telemetry must never fail a request."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            if method.__name__ not in _reported:  # once per method: a bug here must not flood the log
                _reported.add(method.__name__)
                log.exception("telemetry: RequestObserver.%s failed; the request goes on", method.__name__)

    return guarded


class TelemetryObserver:
    """The Observer the server gets when telemetry is on: a RequestTelemetry per request, a counter of rejections."""

    def __init__(
        self, tracer: RequestTracer | None, instruments: Instruments, *, capture_content: bool = False
    ) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.capture_content = capture_content
        self._sampling: dict[tuple[str, str, str], dict[str, Any]] = {}

    def request(self, start: Start) -> RequestObserver:
        return RequestTelemetry(self, start)

    def sampling_attributes(self, key: tuple[str, str, str]) -> dict[str, Any]:
        """What a routed request's span gives its sampler (GenAI v1.41.0: operation, provider and model).

        Made once per model served (`key` is instruments.REQUEST_KEY's values) and shared: never changed.
        """
        found = self._sampling.get(key)
        if found is None:
            found = self._sampling[key] = attributes_of(REQUEST_KEY, key)
        return found

    @_guarded
    def rejected(self, error: RilletError) -> None:
        self.instruments.rejected_messages.add((error.code.name, error.reason))


def _operation(start: Start) -> str:
    """gen_ai.operation.name: chat for chat prompts, text_completion for text and token ids, text_to_speech."""
    spec = start.spec
    if not isinstance(spec, GenerateSpec):
        return sc.OP_TEXT_TO_SPEECH
    chat = isinstance(spec.prompt, tuple) and bool(spec.prompt) and not isinstance(spec.prompt[0], int)
    return sc.OP_CHAT if chat else sc.OP_TEXT_COMPLETION


def _request_attributes(start: Start, request: EngineRequest) -> dict[str, Any]:
    """The request's parameters as GenAI (and Rillet) attributes.

    max_tokens as validated; of the sampling parameters, those the client set (unset ones are the engine's
    defaults, and every attribute costs at export).
    """
    if isinstance(request, SynthesisRequest):
        return {sc.GEN_AI_OUTPUT_TYPE: "speech"}
    attributes: dict[str, Any] = {sc.GEN_AI_OUTPUT_TYPE: "text", sc.GEN_AI_REQUEST_MAX_TOKENS: request.max_tokens}
    spec = start.spec
    assert isinstance(spec, GenerateSpec)
    for key, given in (
        (sc.GEN_AI_REQUEST_TEMPERATURE, spec.temperature),
        (sc.GEN_AI_REQUEST_TOP_P, spec.top_p),
        (sc.GEN_AI_REQUEST_TOP_K, spec.top_k),
        (sc.GEN_AI_REQUEST_SEED, spec.seed),
        (sc.RILLET_REQUEST_MIN_P, spec.min_p),
        (sc.RILLET_REQUEST_REPETITION_PENALTY, spec.repetition_penalty),
        (sc.RILLET_REQUEST_TOP_LOGPROBS, spec.top_logprobs),
    ):
        if given is not None:
            attributes[key] = given
    if request.stop:
        attributes[sc.GEN_AI_REQUEST_STOP_SEQUENCES] = list(request.stop)
    return attributes


def _input_messages(request: GenerationRequest) -> str:
    """gen_ai.input.messages (JSON, the conventions' message shape) of a generation request's prompt."""
    prompt = request.prompt
    if isinstance(prompt, str):
        messages = [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
    elif prompt and not isinstance(prompt[0], int):
        messages = [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in prompt]
    else:
        messages = [{"role": "user", "parts": [{"type": "token_ids", "content": list(prompt)}]}]
    return json.dumps(messages, ensure_ascii=False)


class RequestTelemetry:
    """The telemetry of one request: its span, and its measurements when it ends.

    Created when the start message arrives (in the task that read it, so the current context is the RPC span's);
    the span itself is started at `queued`, when the model is known (samplers see the GenAI attributes at
    creation), with the arrival as its start time; a request failing validation gets its span at `failed`.
    """

    __slots__ = (
        "_admitted",
        "_arrival",
        "_arrival_ns",
        "_key",
        "_links",
        "_operation",
        "_output",
        "_owner",
        "_parent",
        "_queued",
        "_start",
        "_waiting",
        "span",
    )

    def __init__(self, owner: TelemetryObserver, start: Start) -> None:
        self._owner = owner
        self._start = start
        self._arrival_ns = time.time_ns()
        self._arrival = time.perf_counter()
        self._operation = _operation(start)
        self._key: tuple[str, str, str] | None = None  # instruments.REQUEST_KEY's values, set at `queued`
        self._queued = False  # counted in active requests
        self._waiting = False  # counted in queued requests
        self._admitted: float | None = None
        self._output: list[str] | None = [] if owner.capture_content else None
        self.span: RequestSpan | None = None
        self._parent: otel_context.Context | None = None
        self._links: list[Link] = []
        if owner.tracer is not None:
            current = otel_context.get_current()
            rpc = trace.get_current_span(current).get_span_context()
            if rpc.is_valid:
                self._links.append(Link(rpc, _RPC_LINK))
            self._parent = current
            if start.trace is not None:
                carrier = {"traceparent": start.trace.traceparent, "tracestate": start.trace.tracestate}
                remote = _W3C.extract(carrier)
                if trace.get_current_span(remote).get_span_context().is_valid:
                    self._parent = remote  # an invalid one is ignored, as W3C asks: the call's context stands

    def _open(self, model: str, sampling: dict[str, Any], attributes: dict[str, Any]) -> None:
        tracer = self._owner.tracer
        if tracer is None or self._parent is None:
            return
        attributes[sc.GEN_AI_REQUEST_STREAM] = True
        attributes[sc.RILLET_REQUEST_ID] = self._start.request_id
        name = f"{self._operation} {model}" if model else self._operation
        self.span = tracer.start(name, self._parent, sampling, attributes, self._links, self._arrival_ns)

    @_guarded
    def queued(self, model: ModelInfo, request: EngineRequest, source: RequestObserver | None) -> None:
        self._key = key = (self._operation, model.engine, model.name)
        self._queued = self._waiting = True
        instruments = self._owner.instruments
        instruments.active_requests.add(key, 1)
        instruments.queued_requests.add(key, 1)
        if self._owner.tracer is None:
            return
        if isinstance(source, RequestTelemetry) and source.span is not None:
            self._links.append(Link(source.span.context, _SOURCE_LINK))
        attributes = _request_attributes(self._start, request)
        if self._output is not None and isinstance(request, GenerationRequest):
            attributes[sc.GEN_AI_INPUT_MESSAGES] = _input_messages(request)
        self._open(model.name, self._owner.sampling_attributes(key), attributes)

    def _leave_queue(self, key: tuple[str, str, str]) -> None:
        if self._waiting:
            self._waiting = False
            self._owner.instruments.queued_requests.add(key, -1)

    @_guarded
    def admitted(self) -> None:
        self._admitted = time.perf_counter()
        if self._key is not None:
            self._leave_queue(self._key)
        if self.span is not None:
            self.span.add_event(sc.EVENT_ADMITTED)

    @_guarded
    def first_output(self) -> None:
        if self.span is not None:
            speech = self._operation == sc.OP_TEXT_TO_SPEECH
            self.span.add_event(sc.EVENT_FIRST_AUDIO if speech else sc.EVENT_FIRST_TOKEN)

    def output(self, event: TokenDelta | AudioChunk) -> None:
        if self._output is not None and isinstance(event, TokenDelta):
            self._output.append(event.text)

    @_guarded
    def finished(self, result: Finished) -> None:
        self._end(result, "finished")

    @_guarded
    def cancelled(self, result: Finished) -> None:
        if self.span is not None:
            self.span.add_event(sc.EVENT_CANCELLED)
        self._end(result, "cancelled")

    def _end(self, result: Finished, outcome: str) -> None:
        key = self._key
        assert key is not None  # only a queued request finishes or is cancelled
        instruments = self._owner.instruments
        self._leave_queue(key)
        timings, usage = result.timings, result.usage
        speech = self._operation == sc.OP_TEXT_TO_SPEECH
        first = timings.time_to_first_output
        if outcome == "finished":
            instruments.request_duration.record((*key, ""), timings.total)
            if first is not None:
                (instruments.time_to_first_audio if speech else instruments.time_to_first_token).record(key, first)
                if not speech and usage.output_tokens > 1:
                    per_token = (timings.total - first) / (usage.output_tokens - 1)
                    instruments.time_per_output_token.record(key, per_token)
        if outcome == "finished" or self._admitted is not None:
            instruments.queue_duration.record(key, timings.queue)
        self._count(key, outcome, usage.input_tokens, usage.output_tokens, usage.output_audio_seconds)
        span = self.span
        if span is None:
            return
        ended: dict[str, Any] = {
            sc.GEN_AI_RESPONSE_FINISH_REASONS: [result.reason.value],
            sc.RILLET_QUEUE_DURATION: timings.queue,
        }
        if speech:
            ended[sc.RILLET_OUTPUT_AUDIO_SECONDS] = usage.output_audio_seconds
            if usage.input_characters:
                ended[sc.RILLET_INPUT_CHARACTERS] = usage.input_characters
            if first is not None:
                ended[sc.RILLET_TIME_TO_FIRST_AUDIO] = first
        else:
            ended[sc.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            ended[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
        if first is not None:
            ended[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = first
        if self._output is not None and not speech:
            parts = [{"type": "text", "content": "".join(self._output)}]
            message = {"role": "assistant", "parts": parts, "finish_reason": result.reason.value}
            ended[sc.GEN_AI_OUTPUT_MESSAGES] = json.dumps([message], ensure_ascii=False)
        span.end(ended)

    def _count(
        self, key: tuple[str, str, str], outcome: str, input_tokens: int, output_tokens: int, audio_seconds: float
    ) -> None:
        instruments = self._owner.instruments
        instruments.requests.add((*key, outcome))
        if self._queued:
            self._queued = False
            instruments.active_requests.add(key, -1)
        if input_tokens:
            instruments.token_usage.add((*key, "input"), input_tokens)
        if output_tokens:
            instruments.token_usage.add((*key, "output"), output_tokens)
        if audio_seconds:
            instruments.audio_output.add(key, audio_seconds)

    @_guarded
    def failed(self, error: RilletError) -> None:
        key = self._key
        if key is None:  # failed before it was routed: no model, no engine
            key = self._key = (self._operation, _UNROUTED_PROVIDER, "")
            spec = self._start.spec
            name = spec.model if isinstance(spec, GenerateSpec) else spec.voice
            model = clip(name)  # the client's: not a key to keep
            self._open(model, attributes_of(REQUEST_KEY, (self._operation, _UNROUTED_PROVIDER, model)), {})
        self._leave_queue(key)
        instruments = self._owner.instruments
        code = error.code.name
        instruments.request_duration.record((*key, code), time.perf_counter() - self._arrival)
        instruments.request_errors.add((*key, code, error.reason))
        self._count(key, "failed", 0, 0, 0.0)
        if self.span is not None:
            ended = {sc.ERROR_TYPE: code, sc.RILLET_ERROR_REASON: error.reason}
            self.span.end(ended, (StatusCode.ERROR, f"{error.reason}: {error.message}"))
