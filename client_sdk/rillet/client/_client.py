"""The async client: one-shot streams, multiplexed sessions, and typed per-request iterators."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import grpc

from rillet.client import _convert, _tracing
from rillet.client._errors import ProtocolError, RilletError, UnavailableError, error_from_rpc, error_from_status
from rillet.client._tls import TlsOptions
from rillet.client._types import (
    AudioChunk,
    ChatMessage,
    Finished,
    GenerateResult,
    Model,
    SynthesizeResult,
    TokenDelta,
)
from rillet.v1 import common_pb2, inference_service_pb2, inference_service_pb2_grpc

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]
Prompt = str | Sequence[int] | Sequence[ChatMessage]
E = TypeVar("E", TokenDelta, AudioChunk)

HEALTH_SERVICE = "rillet.v1.InferenceService"
"""The grpc.health.v1 service name a balanced channel watches on each backend (NOT_SERVING: warming, draining)."""


def service_config(*, round_robin: bool) -> str:
    """The channel's gRPC service config (JSON).

    Retries: gRPC retries UNAVAILABLE only until the first response message arrives: ListModels, and one-shot
    streams before their first token or chunk. A stream that has started is never replayed (it would duplicate
    output); sessions are not retried at all.

    Balancing (`round_robin`): calls are spread over every address the target resolves to, skipping backends whose
    grpc.health.v1 Watch of HEALTH_SERVICE says NOT_SERVING (warming up, draining) and backends that are down; gRPC
    reconnects to those by itself (with backoff) and takes them back once they serve. A call refused by a draining
    backend before its first output is retried on the next one.
    """
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": [
                    {"service": "rillet.v1.InferenceService", "method": method}
                    for method in ("ListModels", "Generate", "Synthesize")
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    return json.dumps(config)


DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 1),
)


def channel_target(target: str | Sequence[str], round_robin: bool | None = None) -> tuple[str, bool]:
    """The gRPC target for `target`, and whether calls are balanced round_robin over its backends.

    `target` is a gRPC target string or a list of "host:port" addresses (IP literals: a list of names is one DNS
    name away, "dns:///name:port"). Unless `round_robin` says otherwise, a target that names several backends is
    balanced: a list of two or more addresses, an "ipv4:"/"ipv6:" target with several, or any "dns:" target (every
    address the name resolves to, e.g. a Kubernetes headless Service). A plain "host:port" connects to one backend
    at a time (gRPC's pick_first), so the server's own errors (UNAVAILABLE WARMING_UP, ...) reach the caller.
    """
    if isinstance(target, str):
        several = target.startswith("dns:") or (target.startswith(("ipv4:", "ipv6:")) and "," in target)
        return target, several if round_robin is None else round_robin
    addresses = list(target)
    if not addresses:
        raise ValueError("no address to connect to")
    families = {_ip_family(address) for address in addresses}
    if len(families) > 1:
        raise ValueError("a list of addresses must be all IPv4 or all IPv6")
    joined = f"{families.pop()}:{','.join(addresses)}"
    return joined, len(addresses) > 1 if round_robin is None else round_robin


def _ip_family(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"{address!r}: a list of addresses takes IP literals; for a name use one target, 'dns:///{address}'"
        ) from None
    if ip.version == 6 and not host.startswith("["):
        raise ValueError(f"{address!r}: write an IPv6 address in brackets, [addr]:port")
    return f"ipv{ip.version}"


class RequestStream(Generic[E]):
    """The outputs of one request: iterate it for deltas or chunks, then one Finished; errors are raised.

    Leaving the `async for` early, `aclose()`, or leaving `async with` cancels the request on the server (at
    once with `async with`/`aclose`; otherwise when the abandoned iterator is finalized). Iterate it once.
    """

    def __init__(
        self, request_id: str, source: AsyncIterator[E | Finished], cancel: Callable[[], Awaitable[None]]
    ) -> None:
        self.request_id = request_id
        self.finished: Finished | None = None
        self._source: AsyncIterator[E | Finished] = source
        self._cancel = cancel
        self._ended = False
        self._iterated = False

    def __aiter__(self) -> AsyncIterator[E | Finished]:
        if self._iterated:
            raise RuntimeError("a RequestStream can be iterated only once")
        self._iterated = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[E | Finished]:
        try:
            async for item in self._source:
                if isinstance(item, Finished):
                    self.finished = item
                    self._ended = True
                yield item
        except RilletError:
            self._ended = True
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel the request unless it already ended."""
        if not self._ended:
            self._ended = True
            await self._cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class GenerateStream(RequestStream[TokenDelta]):
    """The token deltas of one generation request, then its Finished."""

    async def collect(self) -> GenerateResult:
        """Consume the stream and return the whole text."""
        text: list[str] = []
        ids: list[int] = []
        async for item in self:
            if isinstance(item, TokenDelta):
                text.append(item.text)
                ids.extend(item.token_ids)
        assert self.finished is not None
        return GenerateResult("".join(text), tuple(ids), self.finished)


class SynthesizeStream(RequestStream[AudioChunk]):
    """The audio chunks of one synthesis request, then its Finished."""

    def __init__(
        self,
        request_id: str,
        source: AsyncIterator[AudioChunk | Finished],
        cancel: Callable[[], Awaitable[None]],
        send: Callable[[inference_service_pb2.SessionRequest], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(request_id, source, cancel)
        self._send = send

    async def append_text(self, text: str) -> None:
        """Send more input text (streaming-input requests started in a session)."""
        await self._session_send()(
            inference_service_pb2.SessionRequest(
                request_id=self.request_id, append_text=inference_service_pb2.AppendText(text=text)
            )
        )

    async def end_input(self) -> None:
        """Mark the input complete; the rest is synthesized and the request finishes."""
        await self._session_send()(
            inference_service_pb2.SessionRequest(request_id=self.request_id, end_input=inference_service_pb2.EndInput())
        )

    def _session_send(self) -> Callable[[inference_service_pb2.SessionRequest], Awaitable[None]]:
        if self._send is None:
            raise RuntimeError("only session requests started with streaming_input=True take more text")
        return self._send

    async def collect(self) -> SynthesizeResult:
        """Consume the stream and return the whole audio."""
        pcm = bytearray()
        rate, channels = 0, 1
        async for item in self:
            if isinstance(item, AudioChunk):
                pcm += item.audio
                rate, channels = item.sample_rate_hertz, item.channel_count
        assert self.finished is not None
        return SynthesizeResult(bytes(pcm), rate, channels, self.finished)


def _check_seq(request_id: str, expected: int, seq: int) -> None:
    if seq != expected:
        raise ProtocolError(f"request {request_id!r}: expected seq {expected}, got {seq}", request_id=request_id)


class Client:
    """A connection to a Rillet server. Use `async with Client.connect(target) as client:`.

    One Client holds one gRPC channel (or `connections` of them), which multiplexes every call and session. It is
    safe to use from many tasks of one event loop; it is not thread-safe and does not survive a fork.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        metadata: Metadata = (),
        owns_channel: bool = False,
        tracing: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._channel = channel
        self._stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        self._channels = [channel]  # with connect(connections=n), n channels: each call or session takes the next
        self._stubs = [self._stub]
        self._turn = 0
        self._metadata = tuple(metadata)
        self._owns_channel = owns_channel
        self._tracer = _tracing.tracer(tracer_provider) if tracing else None
        self._server_attributes: dict[str, Any] = {}

    @classmethod
    def connect(
        cls,
        target: str | Sequence[str],
        *,
        round_robin: bool | None = None,
        connections: int = 1,
        tls: TlsOptions | None = None,
        token: str | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, str | int]] = (),
        tracing: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> Client:
        """A client for `target`: "host:port", any gRPC target ("dns:///name:port", "ipv4:a:p,b:p"), or a list.

        A list of addresses or a "dns:" target is balanced `round_robin` over its healthy backends (see
        `channel_target`; `round_robin=True` balances a plain "name:port" over every address it resolves to): calls
        skip backends that are down, warming up or draining, and come back to them once they serve again.
        `tls` makes the connection TLS (mutual TLS with a client certificate); without it the connection is plain.
        `token` is sent on every call as `authorization: Bearer <token>` (as gRPC call credentials under TLS).
        `metadata` goes on every call; `options` are extra gRPC channel arguments.
        `connections` > 1 opens that many connections (channels) and spreads calls and sessions over them in turn:
        one connection is served by one server process and is one client-side serialization point,
        so many streams go faster over several (e.g. to a `rillet serve --workers N` port).
        With OpenTelemetry installed (`rillet-client[otel]`), every call and session request carries the caller's
        current trace context; `tracing=True` also makes a CLIENT span per call (from `tracer_provider`, by default
        the global one).
        """
        if token is not None and (not token or token != token.strip() or "\n" in token):
            raise ValueError("a bearer token must be non-empty, without surrounding whitespace or newlines")
        if connections < 1:
            raise ValueError("connections must be at least 1")
        grpc_target, balanced = channel_target(target, round_robin)
        merged: dict[str, str | int] = dict(DEFAULT_CHANNEL_OPTIONS)
        merged["grpc.service_config"] = service_config(round_robin=balanced)
        if tls is not None and tls.server_name is not None:
            merged["grpc.ssl_target_name_override"] = tls.server_name
        if connections > 1:
            merged["grpc.use_local_subchannel_pool"] = 1  # else channels to one target share one connection
        merged.update(options)
        channel_options = list(merged.items())
        if tls is not None:
            credentials = tls.credentials()
            if token is not None:
                credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
            channels = [
                grpc.aio.secure_channel(grpc_target, credentials, options=channel_options) for _ in range(connections)
            ]
        else:
            # gRPC sends call credentials only over TLS, so on a plain connection the token is ordinary metadata.
            if token is not None:
                metadata = (*metadata, ("authorization", f"Bearer {token}"))
            channels = [grpc.aio.insecure_channel(grpc_target, options=channel_options) for _ in range(connections)]
        client = cls(
            channels[0], metadata=metadata, owns_channel=True, tracing=tracing, tracer_provider=tracer_provider
        )
        client._channels = channels
        client._stubs += [inference_service_pb2_grpc.InferenceServiceStub(c) for c in channels[1:]]
        client._server_attributes = _tracing.server_attributes(grpc_target)
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (when the client created it); calls still open are cancelled."""
        if self._owns_channel:
            await asyncio.gather(*(channel.close() for channel in self._channels))

    def _next_stub(self) -> InferenceServiceAsyncStub:
        """The stub of the next connection in turn (the only one, unless connect(connections=n))."""
        stub = self._stubs[self._turn % len(self._stubs)]
        self._turn += 1
        return stub

    def _meta(self, metadata: Metadata | None) -> tuple[tuple[str, str], ...]:
        return self._metadata + tuple(metadata or ())

    def _trace(self, method: str, metadata: Metadata | None) -> _tracing.CallTrace:
        return _tracing.CallTrace(self._tracer, method, self._server_attributes, self._meta(metadata))

    async def list_models(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> list[Model]:
        """Every model and voice the server serves."""
        trace = self._trace("ListModels", metadata)
        try:
            response = await self._stub.ListModels(
                inference_service_pb2.ListModelsRequest(), timeout=timeout, metadata=trace.metadata
            )
        except grpc.aio.AioRpcError as error:
            trace.end(error.code().name)
            raise error_from_rpc(error) from None
        except asyncio.CancelledError:
            trace.end("CANCELLED")
            raise
        trace.end("OK")
        return [_convert.model(m) for m in response.models]

    def generate(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> GenerateStream:
        """Generate text: `async for` yields TokenDelta then one Finished. `timeout` is the call's deadline.

        Prompt: text, token ids, or ChatMessages (models with a chat template only). Unset sampling fields take
        the server's defaults.
        """
        params = _convert.generate_params(
            prompt,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            top_logprobs=top_logprobs,
        )
        trace = self._trace("Generate", metadata)
        call = self._next_stub().Generate(
            inference_service_pb2.GenerateRequest(params=params), timeout=timeout, metadata=trace.metadata
        )
        return GenerateStream("", self._one_shot(call, _convert.token_delta, "token_delta", trace), _cancel_call(call))

    def synthesize(
        self,
        text: str,
        *,
        voice: str = "",
        sample_rate_hertz: int = 0,
        max_chunk_s: float | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> SynthesizeStream:
        """Synthesize speech: `async for` yields AudioChunk (PCM16) then one Finished."""
        params = _convert.synthesize_params(
            text, voice=voice, sample_rate_hertz=sample_rate_hertz, max_chunk_s=max_chunk_s
        )
        trace = self._trace("Synthesize", metadata)
        call = self._next_stub().Synthesize(
            inference_service_pb2.SynthesizeRequest(params=params), timeout=timeout, metadata=trace.metadata
        )
        stream = self._one_shot(call, _convert.audio_chunk, "audio_chunk", trace)
        return SynthesizeStream("", stream, _cancel_call(call))

    @staticmethod
    async def _one_shot(
        call: grpc.aio.UnaryStreamCall[Any, Any],
        convert: Callable[[Any], E],
        output_field: str,
        trace: _tracing.CallTrace,
    ) -> AsyncIterator[E | Finished]:
        expected = 0
        status = "CANCELLED"  # left early: the stream is cancelled
        try:
            async for response in call:
                _check_seq("", expected, response.seq)
                expected += 1
                kind = response.WhichOneof("kind")
                if kind == output_field:
                    yield convert(getattr(response, output_field))
                elif kind == "finished":
                    status = "OK"
                    yield _convert.finished(response.finished)
                    return
                else:
                    raise ProtocolError(f"unexpected message kind {kind!r}")
        except grpc.aio.AioRpcError as error:
            status = error.code().name
            raise error_from_rpc(error) from None
        finally:
            trace.end(status)
        raise ProtocolError("the stream ended without a finished message")

    def session(self, *, timeout: float | None = None, metadata: Metadata | None = None) -> Session:
        """A bidirectional session on which many requests run at once. Use `async with client.session() as s:`.

        `timeout` is the deadline of the whole session call; give per-request limits to each request instead.
        """
        return Session(
            self._next_stub(), timeout=timeout, metadata=self._meta(metadata), trace=self._trace("Session", metadata)
        )


def _cancel_call(call: grpc.aio.Call) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        call.cancel()

    return cancel


_Item = TokenDelta | AudioChunk | Finished | RilletError


START_REJECTIONS = frozenset(
    {"REQUEST_ID_TOO_LONG", "MISSING_REQUEST_ID", "DUPLICATE_REQUEST_ID", "INVALID_DURATION", "INTERNAL"}
)
"""Reasons with which the server refuses a start message: the request never began, so its stream raises."""


@dataclass
class _Pending:
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    next_seq: int = 0


class Session:
    """A multiplexed bidirectional session: many requests at once, each with its own stream.

    Start requests with `generate` and `synthesize`. Leaving `async with` (or `aclose()`) cancels the call and with
    it every request still running.

    `rejections` keeps the last server replies to client messages that could not be applied (e.g. a cancel that
    raced with the request's end); they never affect a request.
    """

    def __init__(
        self,
        stub: InferenceServiceAsyncStub,
        *,
        timeout: float | None,
        metadata: Metadata,
        trace: _tracing.CallTrace | None = None,
    ) -> None:
        self._trace = trace
        self._call = stub.Session(timeout=timeout, metadata=trace.metadata if trace is not None else tuple(metadata))
        self._pending: dict[str, _Pending] = {}
        self._write_lock = asyncio.Lock()
        self._ids = itertools.count()
        self._failure: RilletError | None = None  # set once the call ended: new sends fail with it
        self._call_error: RilletError | None = None  # how the call failed, None when it ended with OK
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.rejections: collections.deque[RilletError] = collections.deque(maxlen=32)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the session call; the server aborts every request still running."""
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        """Half-close: no new requests; wait until the requests in flight finish and the server ends the call."""
        async with self._write_lock:
            await self._call.done_writing()
        await self._reader
        if self._call_error is not None:
            raise self._call_error

    async def generate(
        self,
        prompt: Prompt,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        traceparent: str = "",
        tracestate: str = "",
        model: str = "",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int | None = None,
    ) -> GenerateStream:
        """Start a generation request in this session. `timeout` is this request's own limit.

        `traceparent`/`tracestate` (W3C) put the request in a trace; unset, the caller's current OpenTelemetry
        context is sent (when opentelemetry-api is installed).
        """
        if not traceparent:
            traceparent, tracestate = _tracing.request_context()
        params = _convert.generate_params(
            prompt,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            top_logprobs=top_logprobs,
        )
        start = inference_service_pb2.StartGenerate(
            params=params, trace_context=common_pb2.TraceContext(traceparent=traceparent, tracestate=tracestate)
        )
        if timeout is not None:
            start.timeout.CopyFrom(_convert.duration(timeout))
        rid = request_id or self._new_id()
        source = self._register(rid)
        await self._send(inference_service_pb2.SessionRequest(request_id=rid, start_generate=start))
        return GenerateStream(rid, self._iterate(rid, source, TokenDelta), self._canceller(rid))

    async def synthesize(
        self,
        text: str = "",
        *,
        voice: str = "",
        streaming_input: bool = False,
        text_from: RequestStream[TokenDelta] | str | None = None,
        sample_rate_hertz: int = 0,
        max_chunk_s: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        traceparent: str = "",
        tracestate: str = "",
    ) -> SynthesizeStream:
        """Start a synthesis request in this session.

        With `streaming_input`, send more text with `append_text` and finish with `end_input`. With `text_from` (a
        generate request of this session), the server speaks its tokens as they are generated. Trace context: as
        `generate`.
        """
        if not traceparent:
            traceparent, tracestate = _tracing.request_context()
        start = inference_service_pb2.StartSynthesize(
            params=_convert.synthesize_params(
                text, voice=voice, sample_rate_hertz=sample_rate_hertz, max_chunk_s=max_chunk_s
            ),
            trace_context=common_pb2.TraceContext(traceparent=traceparent, tracestate=tracestate),
            streaming_input=streaming_input,
            text_from_request_id=text_from if isinstance(text_from, str) else text_from.request_id if text_from else "",
        )
        if timeout is not None:
            start.timeout.CopyFrom(_convert.duration(timeout))
        rid = request_id or self._new_id()
        source = self._register(rid)
        await self._send(inference_service_pb2.SessionRequest(request_id=rid, start_synthesize=start))
        return SynthesizeStream(rid, self._iterate(rid, source, AudioChunk), self._canceller(rid), self._send)

    async def cancel(self, request_id: str) -> None:
        """Ask the server to cancel a request; it then ends with Finished(reason=CANCELLED)."""
        await self._send(
            inference_service_pb2.SessionRequest(request_id=request_id, cancel=inference_service_pb2.Cancel())
        )

    def _new_id(self) -> str:
        return f"r{next(self._ids)}"

    def _register(self, request_id: str) -> _Pending:
        if self._failure is not None:
            raise self._failure
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already in flight in this session")
        pending = _Pending()
        self._pending[request_id] = pending
        return pending

    def _canceller(self, request_id: str) -> Callable[[], Awaitable[None]]:
        async def cancel() -> None:
            if request_id in self._pending and self._failure is None and not self._call.done():
                with contextlib.suppress(RilletError):  # the call is ending anyway; the server aborts all then
                    await self.cancel(request_id)

        return cancel

    async def _send(self, message: inference_service_pb2.SessionRequest) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            async with self._write_lock:
                await self._call.write(message)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        except asyncio.InvalidStateError:
            raise self._failure or UnavailableError("the session has ended") from None

    @staticmethod
    async def _iterate(request_id: str, pending: _Pending, output: type[E]) -> AsyncIterator[E | Finished]:
        while True:
            item = await pending.queue.get()
            if isinstance(item, RilletError):
                raise item
            if not isinstance(item, output | Finished):
                raise ProtocolError(f"request {request_id!r} received a {type(item).__name__}", request_id=request_id)
            yield item
            if isinstance(item, Finished):
                return

    async def _read(self) -> None:
        failure: RilletError | None = None
        try:
            async for response in self._call:
                self._dispatch(response)
        except grpc.aio.AioRpcError as error:
            failure = error_from_rpc(error)
        except asyncio.CancelledError:
            failure = UnavailableError("the session was closed")
        except RilletError as error:
            failure = error
        if self._trace is not None:
            self._trace.end("OK" if failure is None else failure.code.name)
        self._call_error = failure
        self._failure = failure or UnavailableError("the session has ended")
        for pending in self._pending.values():
            pending.queue.put_nowait(failure or UnavailableError("the session ended before the request finished"))
        self._pending.clear()

    def _refused_start(self, echoed_id: str) -> str | None:
        """The pending request whose start a rejection refers to, or None (the rejection was of a cancel or append).

        It has the echoed id (or, for the server's clipped echo of a long id, "prefix…", starts with the prefix) and
        has received nothing yet.
        """
        if echoed_id.endswith("…"):
            prefix = echoed_id[:-1]
            matches = (rid for rid, p in self._pending.items() if p.next_seq == 0 and rid.startswith(prefix))
            return next(matches, None)
        pending = self._pending.get(echoed_id)
        return echoed_id if pending is not None and pending.next_seq == 0 else None

    def _dispatch(self, response: inference_service_pb2.SessionResponse) -> None:
        rid = response.request_id
        kind = response.WhichOneof("kind")
        if kind == "rejected":
            rejection = error_from_status(response.rejected, request_id=rid)
            log.debug("server rejected a message: %s", rejection)
            self.rejections.append(rejection)
            if rejection.reason in START_REJECTIONS and (refused := self._refused_start(rid)) is not None:
                self._pending.pop(refused).queue.put_nowait(rejection)  # its iterator raises instead of waiting
            return
        pending = self._pending.get(rid)
        if pending is None:
            raise ProtocolError(f"a {kind} message for unknown request {rid!r}", request_id=rid)
        _check_seq(rid, pending.next_seq, response.seq)
        pending.next_seq += 1
        item: _Item
        if kind == "token_delta":
            item = _convert.token_delta(response.token_delta)
        elif kind == "audio_chunk":
            item = _convert.audio_chunk(response.audio_chunk)
        elif kind == "finished":
            item = _convert.finished(response.finished)
        elif kind == "error":
            item = error_from_status(response.error, request_id=rid)
        else:
            raise ProtocolError(f"unexpected message kind {kind!r}", request_id=rid)
        pending.queue.put_nowait(item)
        if isinstance(item, Finished | RilletError):
            del self._pending[rid]
