"""The async client: one-shot streams, sessions and model listing over one or more channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import grpc

from rillet.client import _convert, _tracing
from rillet.client._channel import ChannelConfig, KeepAlive
from rillet.client._closing import Closing
from rillet.client._errors import error_from_rpc
from rillet.client._inbox import DEFAULT_LIMIT_BYTES
from rillet.client._options import GenerateFields, GenerateOptions, SynthesizeFields, SynthesizeOptions, resolve
from rillet.client._session import Session
from rillet.client._streams import GenerateStream, SynthesizeStream, one_shot
from rillet.client._tls import TlsOptions
from rillet.client._types import Model
from rillet.v1 import inference_service_pb2, inference_service_pb2_grpc

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from rillet.client._convert import Prompt
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

        A list of addresses or a "dns:" target is balanced `round_robin` over its healthy backends (see
        `channel_target`; `round_robin=True` balances a plain "name:port" over every address it resolves to): calls
        skip backends that are down, warming up or draining, and come back to them once they serve again.
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

    async def list_models(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> list[Model]:
        """Every model and voice the server serves."""
        self._check_open()
        trace = self._trace("ListModels", metadata)
        try:
            response = await self._track(
                self._stubs[0].ListModels(
                    inference_service_pb2.ListModelsRequest(), timeout=timeout, metadata=trace.metadata
                )
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
        options: GenerateOptions | None = None,
        *,
        metadata: Metadata | None = None,
        **fields: Unpack[GenerateFields],
    ) -> GenerateStream:
        """Generate text: `async for` yields TokenDelta then one Finished.

        `options` (or its fields as keywords; see GenerateOptions): `timeout` is the call's deadline. Prompt: text,
        token ids, or ChatMessages (models with a chat template only). Unset sampling fields take the server's
        defaults.
        """
        options = resolve(options, _GENERATE, fields)
        request = inference_service_pb2.GenerateRequest(params=_convert.generate_params(prompt, options))
        call, trace = self._one_shot("Generate", request, options, metadata)
        return GenerateStream("", one_shot(call, _convert.token_delta, "token_delta", trace), _cancel_call(call))

    def synthesize(
        self,
        text: str,
        options: SynthesizeOptions | None = None,
        *,
        metadata: Metadata | None = None,
        **fields: Unpack[SynthesizeFields],
    ) -> SynthesizeStream:
        """Synthesize speech: `async for` yields AudioChunk (PCM16) then one Finished.

        `options` (or its fields as keywords; see SynthesizeOptions): `timeout` is the call's deadline.
        """
        options = resolve(options, _SYNTHESIZE, fields)
        request = inference_service_pb2.SynthesizeRequest(params=_convert.synthesize_params(text, options))
        call, trace = self._one_shot("Synthesize", request, options, metadata)
        return SynthesizeStream("", one_shot(call, _convert.audio_chunk, "audio_chunk", trace), _cancel_call(call))

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


def _cancel_call(call: grpc.aio.Call) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        call.cancel()

    return cancel
