"""Method handlers: their behavior, whichever of the four kinds, and guards that wrap them as services register.

Guards (the auth gate, RPC telemetry) wrap each handler once, at registration, rather than in a grpc.aio server
interceptor: a server with any interceptor sends every call through its interceptor chain, which cost 35-45 µs of
idle time to first token on these 2-core machines (sequential calls, side by side with bench/floor.py).
"""

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
    """Where a service registers its handlers: a grpc.aio.Server, or a GuardedRegistry in front of one."""

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None: ...


class Guard(Protocol):
    """Wraps a method's handler (same kind, same serializers), or returns it as it is when it has nothing to do."""

    def guard(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of the fully qualified `method` ("/package.Service/Method"), guarded."""
        ...


class GuardedRegistry:
    """A grpc.aio server's registration methods, putting every handler registered through them behind `guards`.

    The first guard is the outermost: it sees the call before, and its outcome after, the ones that follow.
    """

    def __init__(self, server: grpc.aio.Server, guards: Sequence[Guard]) -> None:
        self._server = server
        self._guards = tuple(reversed(guards))  # innermost first: the order they are applied in

    def guard(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        for guard in self._guards:
            handler = guard.guard(method, handler)
        return handler

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Guarded(h, self) for h in generic_handlers))

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        guarded = {name: self.guard(f"/{service_name}/{name}", h) for name, h in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, guarded)


class _Guarded(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded (each once: the methods are the service's)."""

    def __init__(self, inner: grpc.GenericRpcHandler, registry: GuardedRegistry) -> None:
        self._inner = inner
        self._registry = registry
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None  # not remembered: a caller may try any number of names
            guarded = self._guarded[method] = self._registry.guard(method, handler)
        return guarded
