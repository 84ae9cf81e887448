"""The ControlService servicer: parse, delegate to the control plane (control.py), emit. Nothing else lives here.

As InferenceService's, its methods receive raw bytes and parse them (an undecodable request is INVALID_ARGUMENT), and
no exception reaches gRPC unmapped: a RilletError ends the call with its canonical code, anything else INTERNAL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from rillet.server.config import Settings
from rillet.server.control import Control
from rillet.server.tenancy import current_tenant
from rillet.server.transport import control_convert, convert
from rillet.server.transport.handlers import Registry
from rillet.server.transport.orca import StreamSlots
from rillet.server.transport.servicer import abort, canonical
from rillet.server.validation import check_id_length
from rillet.v1 import control_service_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ControlService"].full_name

R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]


class ControlServicer:
    """Maps each ControlService RPC onto Control; the converters (control_convert.py) do the proto work."""

    def __init__(self, control: Control, settings: Settings, slots: StreamSlots, draining: Callable[[], bool]) -> None:
        self._control = control
        self._settings = settings
        self._slots = slots
        self._draining = draining

    async def GetServerInfo(self, request: bytes, context: Context) -> pb.GetServerInfoResponse:
        async def serve() -> pb.GetServerInfoResponse:
            convert.parse(request, pb.GetServerInfoRequest)
            return control_convert.server_info(self._control.server_info(), self._settings)

        return await _unary(serve, context)

    async def GetLoad(self, request: bytes, context: Context) -> pb.GetLoadResponse:
        async def serve() -> pb.GetLoadResponse:
            convert.parse(request, pb.GetLoadRequest)
            return pb.GetLoadResponse(load=control_convert.server_load(self._control.load()))

        return await _unary(serve, context)

    async def WatchLoad(self, request: bytes, context: Context) -> AsyncIterator[pb.WatchLoadResponse]:
        load = self._settings.load
        try:
            message = convert.parse(request, pb.WatchLoadRequest)
            interval_s = control_convert.watch_interval(message, load.min_interval_s, load.max_interval_s)
            self._slots.take()
        except Exception as error:
            await abort(context, canonical(error))
        try:
            while not self._draining():
                yield pb.WatchLoadResponse(load=control_convert.server_load(self._control.load()))
                await asyncio.sleep(interval_s)
        finally:
            self._slots.give()

    async def Tokenize(self, request: bytes, context: Context) -> pb.TokenizeResponse:
        async def serve() -> pb.TokenizeResponse:
            message = convert.parse(request, pb.TokenizeRequest)
            prompt = control_convert.prompt(message, self._settings.limits.max_chat_messages)
            return pb.TokenizeResponse(token_ids=await self._control.tokenize(message.model, prompt))

        return await _unary(serve, context)

    async def Detokenize(self, request: bytes, context: Context) -> pb.DetokenizeResponse:
        async def serve() -> pb.DetokenizeResponse:
            message = convert.parse(request, pb.DetokenizeRequest)
            ids = message.token_ids[: self._settings.limits.max_prompt_chars + 1]
            return pb.DetokenizeResponse(text=await self._control.detokenize(message.model, ids))

        return await _unary(serve, context)

    async def CountTokens(self, request: bytes, context: Context) -> pb.CountTokensResponse:
        async def serve() -> pb.CountTokensResponse:
            message = convert.parse(request, pb.CountTokensRequest)
            prompt = control_convert.prompt(message, self._settings.limits.max_chat_messages)
            count, context_length = await self._control.count_tokens(message.model, prompt)
            return pb.CountTokensResponse(token_count=count, context_length=context_length)

        return await _unary(serve, context)

    async def Abort(self, request: bytes, context: Context) -> pb.AbortResponse:
        async def serve() -> pb.AbortResponse:
            target = control_convert.abort_target(convert.parse(request, pb.AbortRequest))
            if target is not None:
                check_id_length(target, self._settings.limits)
            return pb.AbortResponse(request_ids=self._control.abort(current_tenant(), target))

        return await _unary(serve, context)


async def _unary(serve: Callable[[], Awaitable[R]], context: Context) -> R:
    try:
        return await serve()
    except grpc.aio.AbortError:
        raise
    except Exception as error:
        await abort(context, canonical(error))


def add_to_server(servicer: ControlServicer, server: Registry) -> None:
    """Register the service with no request deserializer: each method parses its raw bytes (servicer.py's reason)."""
    unary: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), response_serializer=lambda message: message.SerializeToString()
        )
        for name in ("GetServerInfo", "GetLoad", "Tokenize", "Detokenize", "CountTokens", "Abort")
    }
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        **unary,
        "WatchLoad": grpc.unary_stream_rpc_method_handler(
            servicer.WatchLoad, response_serializer=pb.WatchLoadResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
