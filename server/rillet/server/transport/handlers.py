"""A method handler's behavior, whichever of its four kinds (what wrappers read and replace); where handlers go."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

H = TypeVar("H", bound="grpc.RpcMethodHandler[Any, Any]")

_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def _kind(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    return _KINDS[(handler.request_streaming, handler.response_streaming)]


def behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    """The function that serves the handler's calls."""
    found: Callable[..., Any] = getattr(handler, _kind(handler))
    return found


def with_behavior(handler: H, replacement: Callable[..., Any]) -> H:
    """`handler` with its behavior replaced (same kind, same serializers)."""
    return handler._replace(**{_kind(handler): replacement})  # type: ignore[attr-defined,no-any-return]


class Registry(Protocol):
    """Where a service registers its handlers: a grpc.aio.Server, or one seen through auth.GatedRegistry."""

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None: ...
