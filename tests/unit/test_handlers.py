"""Guards wrap handlers as services register: in order (the first outermost), once per method, never for a stranger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from rillet.server.transport.handlers import GuardedRegistry, behavior, with_behavior

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Recording:
    """A guard that notes its name around the calls of the handlers it wraps, and which methods it was shown."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.shown: list[str] = []

    def guard(self, method: str, handler: Handler) -> Handler:
        self.shown.append(method)
        served = behavior(handler)

        async def wrapped(request: object, context: object) -> AsyncIterator[object]:
            self.log.append(f"{self.name} in")
            async for response in served(request, context):
                yield response
            self.log.append(f"{self.name} out")

        return with_behavior(handler, wrapped)


class Server:
    """What GuardedRegistry registers with, keeping what it was given."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})


def streaming(log: list[str]) -> Handler:
    async def served(request: object, context: object) -> AsyncIterator[str]:
        log.append("served")
        yield "one"

    return grpc.unary_stream_rpc_method_handler(served)


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def test_the_first_guard_is_outermost_for_registered_and_generic_handlers() -> None:
    log: list[str] = []
    outer, inner = Recording("outer", log), Recording("inner", log)
    server = Server()
    registry = GuardedRegistry(server, [outer, inner])  # type: ignore[arg-type]
    registry.add_registered_method_handlers("p.S", {"M": streaming(log)})
    registry.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("p.G", {"M": streaming(log)}),))

    responses = [r async for r in behavior(server.registered["/p.S/M"])(b"", None)]
    assert responses == ["one"]
    assert log == ["outer in", "inner in", "served", "inner out", "outer out"]

    log.clear()
    generic = server.generic[0]
    found = generic.service(Details("/p.G/M"))
    assert found is not None
    assert [r async for r in behavior(found)(b"", None)] == ["one"]
    assert log == ["outer in", "inner in", "served", "inner out", "outer out"]


def test_a_generic_handler_is_guarded_once_per_method_and_unknown_names_are_not_remembered() -> None:
    log: list[str] = []
    guard = Recording("g", log)
    server = Server()
    GuardedRegistry(server, [guard]).add_generic_rpc_handlers(  # type: ignore[arg-type]
        (grpc.method_handlers_generic_handler("p.G", {"M": streaming(log)}),)
    )
    generic = server.generic[0]
    first, second = generic.service(Details("/p.G/M")), generic.service(Details("/p.G/M"))
    assert first is not None
    assert first is second
    for n in range(3):
        assert generic.service(Details(f"/p.G/Nope{n}")) is None
    assert guard.shown == ["/p.G/M"]  # wrapped once; the unknown names never reached the guard
