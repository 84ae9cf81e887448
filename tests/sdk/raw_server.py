"""A raw grpc.aio server for the SDK's tests: rillet.v1.InferenceService methods as each test writes them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from rillet.v1 import inference_service_pb2 as pb


def generate(handler: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_stream_rpc_method_handler(
        handler, pb.GenerateRequest.FromString, pb.GenerateResponse.SerializeToString
    )


def synthesize(handler: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_stream_rpc_method_handler(
        handler, pb.SynthesizeRequest.FromString, pb.SynthesizeResponse.SerializeToString
    )


def session(handler: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.stream_stream_rpc_method_handler(
        handler, pb.SessionRequest.FromString, pb.SessionResponse.SerializeToString
    )


@contextlib.asynccontextmanager
async def serving(handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> AsyncIterator[str]:
    """A server on a loopback port with these methods (by name); yields its target."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rillet.v1.InferenceService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
