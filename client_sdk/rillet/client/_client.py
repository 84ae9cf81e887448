"""The async client: one-shot streams, sessions and model listing over one or more channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import grpc

from rillet.client import _control, _convert, _tracing
from rillet.client._channel import ChannelConfig, KeepAlive
from rillet.client._closing import Closing
from rillet.client._errors import error_from_rpc
from rillet.client._inbox import DEFAULT_LIMIT_BYTES
from rillet.client._options import GenerateFields, GenerateOptions, SynthesizeFields, SynthesizeOptions, resolve
from rillet.client._session import Session
from rillet.client._streams import GenerateStream, SynthesizeStream, one_shot
from rillet.client._tls import TlsOptions
from rillet.client._types import ChatMessage, Model
from rillet.v1 import control_service_pb2, control_service_pb2_grpc, inference_service_pb2, inference_service_pb2_grpc

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from rillet.client._convert import Prompt
    from rillet.v1.control_service_pb2_grpc import ControlServiceAsyncStub
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub

Metadata = Sequence[tuple[str, str]]
C = TypeVar("C", bound=grpc.aio.Call)

_KEEPALIVE = KeepAlive()
_GENERATE = GenerateOptions()
_SYNTHESIZE = SynthesizeOptions()


class Client(Closing):
    """A connection to a Rillet server. Use `async with Client.connect(target) as client:`.

    One Client holds one gRPC channel (or `connections` of them), which multiplexes every call and session. It is
    safe to use from many tasks of one event loop; it is not thread-safe and does not survive a fork.

    Ending it: `close()` finishes (no new calls; the calls and sessions still open run to their end, then the
    channels close); `aclose()` ends now (the channels close and every call still open is cancelled). Leaving
    `async with` calls `aclose()`. Sessions and streams follow the same rule.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | Sequence[grpc.aio.Channel],
        *,
        metadata: Metadata = (),
        owns_channel: bool = False,
        tracing: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """A client on `channel` (or on several, taken in turn by each call and session).

        `owns_channel`: the client closes the channels when it ends. `metadata`, `tracing`: as in `connect`.
        """
        self._channels = [channel] if isinstance(channel, grpc.aio.Channel) else list(channel)
        if not self._channels:
            raise ValueError("a client needs a channel")
        self._stubs = [inference_service_pb2_grpc.InferenceServiceStub(c) for c in self._channels]
        self._control: ControlServiceAsyncStub = control_service_pb2_grpc.ControlServiceStub(self._channels[0])
        self._turn = 0
        self._metadata = tuple(metadata)
        self._owns_channel = owns_channel
        self._tracer = _tracing.tracer(tracer_provider) if tracing else None
        self._server_attributes: dict[str, Any] = {}
        self._calls: set[grpc.aio.Call] = set()  # open calls and sessions, which `close()` waits for
        self._closed = False

    @classmethod
    def connect(
        cls,
        target: str | Sequence[str],
        *,
        round_robin: bool | None = None,
        weighted: bool = True,
        connections: int = 1,
        tls: TlsOptions | None = None,
        token: str | None = None,
        keepalive: KeepAlive = _KEEPALIVE,
        metadata: Metadata = (),
        options: Sequence[tuple[str, str | int]] = (),
        tracing: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> Client:
        """A client for `target`: "host:port", any gRPC target ("dns:///name:port", "ipv4:a:p,b:p"), or a list.

        A list of addresses or a "dns:" target is balanced over its healthy backends (see `channel_target`;
        `round_robin=True` balances a plain "name:port" over every address it resolves to): calls skip backends that
        are down, warming up or draining, and come back to them once they serve again. They are weighed by each
        backend's load reports (gRPC's weighted_round_robin on ORCA), so new calls go where there is room;
        `weighted=False` balances plain round_robin.
        `tls` makes the connection TLS (mutual TLS with a client certificate); without it the connection is plain.
        `token` is sent on every call as `authorization: Bearer <token>` (as gRPC call credentials under TLS).
        `keepalive` pings idle connections; `options` are extra gRPC channel arguments (see ChannelConfig).
        `metadata` goes on every call.
        `connections` > 1 opens that many connections (channels) and spreads calls and sessions over them in turn:
        one connection is served by one server process and is one client-side serialization point,
        so many streams go faster over several (e.g. to a `rillet serve --workers N` port).
        With OpenTelemetry installed (`rillet-client[otel]`), every call and session request carries the caller's
        current trace context; `tracing=True` also makes a CLIENT span per call (from `tracer_provider`, by default
        the global one).
        """
        config = ChannelConfig(
            target,
            round_robin=round_robin,
            weighted=weighted,
            connections=connections,
            tls=tls,
            token=token,
            keepalive=keepalive,
            options=options,
        )
        return cls.from_config(config, metadata=metadata, tracing=tracing, tracer_provider=tracer_provider)

    @classmethod
    def from_config(
        cls,
        config: ChannelConfig,
        *,
        metadata: Metadata = (),
        tracing: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> Client:
        """A client on new channels that `config` describes (closed when the client ends)."""
        client = cls(
            config.open_all(),
            metadata=(*metadata, *config.metadata()),
            owns_channel=True,
            tracing=tracing,
            tracer_provider=tracer_provider,
        )
        client._server_attributes = _tracing.server_attributes(config.grpc_target)
        return client

    async def aclose(self) -> None:
        """End now: no new calls; close the channels (when the client owns them), cancelling every call still open."""
        self._closed = True
        if self._owns_channel:
            await asyncio.gather(*(channel.close() for channel in self._channels))

    async def close(self, *, grace: float | None = None) -> None:
        """Finish: no new calls; wait for the calls and sessions still open to end, then `aclose()`.

        `grace` bounds the wait (seconds). Sessions end by their own `close()`; a stream nobody reads never ends.
        """
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(call.code() for call in self._calls)), grace)
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    def _next_stub(self) -> InferenceServiceAsyncStub:
        """The stub of the next connection in turn (the only one, unless connect(connections=n))."""
        self._check_open()
        stub = self._stubs[self._turn % len(self._stubs)]
        self._turn += 1
        return stub

    def _track(self, call: C) -> C:
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return call

    def _trace(
        self, method: str, metadata: Metadata | None, traceparent: str = "", tracestate: str = ""
    ) -> _tracing.CallTrace:
        return _tracing.CallTrace(
            self._tracer,
            method,
            self._server_attributes,
            self._metadata + tuple(metadata or ()),
            traceparent=traceparent,
            tracestate=tracestate,
        )

    async def _unary(
        self, method: str, call: Callable[..., Any], request: Any, timeout: float | None, metadata: Metadata | None
    ) -> Any:
        """One unary call: traced, tracked, its failure raised as the SDK's exception."""
        self._check_open()
        trace = self._trace(method, metadata)
        try:
            response = await self._track(call(request, timeout=timeout, metadata=trace.metadata))
        except grpc.aio.AioRpcError as error:
            trace.end(error.code().name)
            raise error_from_rpc(error) from None
        except asyncio.CancelledError:
            trace.end("CANCELLED")
            raise
        trace.end("OK")
        return response

    async def list_models(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> list[Model]:
        """Every model and voice the server serves."""
        self._check_open()
        request = inference_service_pb2.ListModelsRequest()
        response = await self._unary("ListModels", self._stubs[0].ListModels, request, timeout, metadata)
        return [_convert.model(m) for m in response.models]

    # ---- the control plane (rillet.v1.ControlService) ----------------------------------------------------------
    # On a balanced client each call goes to one backend, as the balancer picks it: ask a backend of your choice
    # with a client of its own address (Abort, notably, reaches only the requests of the server it lands on).

    async def server_info(
        self, *, timeout: float | None = 10.0, metadata: Metadata | None = None
    ) -> _control.ServerInfo:
        """What the server is: version, engines (and which tokenize), models, limits, drain state."""
        self._check_open()
        request = control_service_pb2.GetServerInfoRequest()
        response = await self._unary("GetServerInfo", self._control.GetServerInfo, request, timeout, metadata)
        return _control.server_info(response)

    async def load(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> _control.ServerLoad:
        """The server's load now: per engine, requests running and waiting, KV cache use, recent throughput."""
        self._check_open()
        response = await self._unary(
            "GetLoad", self._control.GetLoad, control_service_pb2.GetLoadRequest(), timeout, metadata
        )
        return _control.server_load(response.load)

    async def watch_load(
        self, interval: float = 1.0, *, metadata: Metadata | None = None
    ) -> AsyncGenerator[_control.ServerLoad, None]:
        """The server's load at once, then every `interval` seconds (clamped by the server).

        Until you stop iterating (the call is then cancelled) or the server drains (the iteration ends).
        """
        self._check_open()
        request = control_service_pb2.WatchLoadRequest(interval=_convert.duration(interval))
        trace = self._trace("WatchLoad", metadata)
        call = self._track(self._control.WatchLoad(request, metadata=trace.metadata))
        status = "CANCELLED"
        try:
            async for response in call:
                yield _control.server_load(response.load)
            status = "OK"
        except grpc.aio.AioRpcError as error:
            status = error.code().name
            raise error_from_rpc(error) from None
        finally:
            call.cancel()
            trace.end(status)

    async def tokenize(
        self,
        prompt: str | Sequence[ChatMessage],
        *,
        model: str = "",
        timeout: float | None = 10.0,
        metadata: Metadata | None = None,
    ) -> tuple[int, ...]:
        """The prompt's token ids as the model reads it for generation (a chat prompt through its chat template)."""
        self._check_open()
        request = control_service_pb2.TokenizeRequest(model=model)
        _set_prompt(request, prompt)
        response = await self._unary("Tokenize", self._control.Tokenize, request, timeout, metadata)
        return tuple(response.token_ids)

    async def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        model: str = "",
        timeout: float | None = 10.0,
        metadata: Metadata | None = None,
    ) -> str:
        """The text of `token_ids`, as the model would print them."""
        self._check_open()
        request = control_service_pb2.DetokenizeRequest(model=model, token_ids=token_ids)
        response = await self._unary("Detokenize", self._control.Detokenize, request, timeout, metadata)
        text: str = response.text
        return text

    async def count_tokens(
        self,
        prompt: str | Sequence[ChatMessage],
        *,
        model: str = "",
        timeout: float | None = 10.0,
        metadata: Metadata | None = None,
    ) -> _control.TokenCount:
        """How many tokens the prompt takes, and the model's context length."""
        self._check_open()
        request = control_service_pb2.CountTokensRequest(model=model)
        _set_prompt(request, prompt)
        response = await self._unary("CountTokens", self._control.CountTokens, request, timeout, metadata)
        return _control.TokenCount(response.token_count, response.context_length)

    async def abort(
        self, request_id: str, *, timeout: float | None = 10.0, metadata: Metadata | None = None
    ) -> tuple[str, ...]:
        """End this tenant's requests in flight under `request_id` on the server, from any call or session.

        Each ends in its own stream with Finished(reason=CANCELLED). Returns the ids ended (one per request);
        NotFoundError (REQUEST_NOT_FOUND) when the tenant has none in flight under that id.
        """
        self._check_open()
        request = control_service_pb2.AbortRequest(request_id=request_id)
        response = await self._unary("Abort", self._control.Abort, request, timeout, metadata)
        return tuple(response.request_ids)

    async def abort_all(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> tuple[str, ...]:
        """End every request of this tenant in flight on the server; the ids ended."""
        self._check_open()
        request = control_service_pb2.AbortRequest(all_requests=control_service_pb2.AllRequests())
        response = await self._unary("Abort", self._control.Abort, request, timeout, metadata)
        return tuple(response.request_ids)

    def generate(
        self,
        prompt: Prompt,
        options: GenerateOptions | None = None,
        *,
        request_id: str = "",
        metadata: Metadata | None = None,
        **fields: Unpack[GenerateFields],
    ) -> GenerateStream:
        """Generate text: `async for` yields TokenDelta then one Finished.

        `options` (or its fields as keywords; see GenerateOptions): `timeout` is the call's deadline. Prompt: text,
        token ids, or ChatMessages (models with a chat template only). Unset sampling fields take the server's
        defaults. `request_id` names the request for `abort` from another call (empty: the server names it).
        """
        options = resolve(options, _GENERATE, fields)
        params = _convert.generate_params(prompt, options)
        request = inference_service_pb2.GenerateRequest(params=params, request_id=request_id)
        call, trace = self._one_shot("Generate", request, options, metadata)
        stream = one_shot(call, _convert.token_delta, "token_delta", trace)
        return GenerateStream(request_id, stream, _cancel_call(call))

    def synthesize(
        self,
        text: str,
        options: SynthesizeOptions | None = None,
        *,
        request_id: str = "",
        metadata: Metadata | None = None,
        **fields: Unpack[SynthesizeFields],
    ) -> SynthesizeStream:
        """Synthesize speech: `async for` yields AudioChunk (PCM16) then one Finished.

        `options` (or its fields as keywords; see SynthesizeOptions): `timeout` is the call's deadline. `request_id`:
        as in `generate`.
        """
        options = resolve(options, _SYNTHESIZE, fields)
        params = _convert.synthesize_params(text, options)
        request = inference_service_pb2.SynthesizeRequest(params=params, request_id=request_id)
        call, trace = self._one_shot("Synthesize", request, options, metadata)
        stream = one_shot(call, _convert.audio_chunk, "audio_chunk", trace)
        return SynthesizeStream(request_id, stream, _cancel_call(call))

    def _one_shot(
        self, method: str, request: Any, options: GenerateOptions | SynthesizeOptions, metadata: Metadata | None
    ) -> tuple[grpc.aio.UnaryStreamCall[Any, Any], _tracing.CallTrace]:
        """Start a Generate or Synthesize call: `timeout` is its deadline, its trace context goes in the metadata."""
        trace = self._trace(method, metadata, options.traceparent, options.tracestate)
        start = getattr(self._next_stub(), method)
        return self._track(start(request, timeout=options.timeout, metadata=trace.metadata)), trace

    def session(
        self,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        request_buffer_bytes: int = DEFAULT_LIMIT_BYTES,
    ) -> Session:
        """A bidirectional session on which many requests run at once. Use `async with client.session() as s:`.

        `timeout` is the deadline of the whole session call; give per-request limits to each request instead.
        `request_buffer_bytes` bounds what the SDK holds of each request's outputs not yet iterated (see Session).
        """
        stub = self._next_stub()
        session = Session(
            stub,
            timeout=timeout,
            metadata=(),
            trace=self._trace("Session", metadata),
            request_buffer_bytes=request_buffer_bytes,
        )
        self._track(session._call)
        return session


def _set_prompt(
    request: control_service_pb2.TokenizeRequest | control_service_pb2.CountTokensRequest,
    prompt: str | Sequence[ChatMessage],
) -> None:
    if isinstance(prompt, str):
        request.text = prompt
    else:
        request.chat.messages.extend(_convert.chat_message(m) for m in prompt)
        request.chat.SetInParent()


def _cancel_call(call: grpc.aio.Call) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        call.cancel()

    return cancel
