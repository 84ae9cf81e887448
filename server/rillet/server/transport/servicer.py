"""The InferenceService servicer: parse, delegate to a Session, emit. Nothing else lives here.

Errors at the edge: requests arrive as raw bytes (see `add_to_server`) and are parsed here, so an undecodable frame
gets INVALID_ARGUMENT (in a Session: a `rejected` for that frame alone, the session goes on). No exception reaches
gRPC unmapped: a RilletError ends the call with its canonical code, anything else with INTERNAL, logged once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, NoReturn, TypeVar

import grpc

from rillet.server.config import LimitsConfig
from rillet.server.errors import Internal, InvalidArgument, RilletError, clip
from rillet.server.observer import NULL_OBSERVER, Observer
from rillet.server.scheduler import Router
from rillet.server.session import Lifecycle, Session
from rillet.server.tenancy import current_quota
from rillet.server.transport import convert
from rillet.server.transport.handlers import Registry
from rillet.server.types import Command, Malformed, Output, Start
from rillet.v1 import inference_service_pb2 as pb

log = logging.getLogger(__name__)
# One-shot requests get an internal id (logs and traces): unique per process by the counter, across processes by
# the prefix, and without a system call per request as uuid4 makes.
_ONE_SHOT_PREFIX = secrets.token_hex(4)
_one_shot_ids = itertools.count()

T = TypeVar("T")
Metadata = tuple[tuple[str, str | bytes], ...]
F = TypeVar("F", bound=bytes | str)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name

PARSE_INLINE_MAX_BYTES = 64 * 1024
"""Frames up to this size are parsed and converted on the event loop; larger ones in a worker thread.

Measured on 2 cores over loopback, with a neighbour session streaming 500 tokens/s while another sent three 2-4 MB
frames: parsed and converted on the loop, a 400,000-message chat prompt stalled the neighbour 620-840 ms and a
million token ids 160-320 ms, nearly all of it in turning repeated fields into Python objects. convert.generate_spec
now keeps one item past each limit (28-41 ms worst gap, still inline); the thread took it to 21-22 ms, because the
conversion's Python-level work yields the GIL to the loop there. Protobuf's C parse (1-15 ms for 4 MB) keeps the GIL
wherever it runs. A frame under 64 KiB takes microseconds, less than the hop to a thread.
"""


async def abort(context: grpc.aio.ServicerContext[object, object], error: RilletError) -> NoReturn:
    """End the call with the error's canonical code and a google.rpc.Status (ErrorInfo, RetryInfo) in trailers."""
    status = convert.status(error)
    await context.abort(
        _GRPC_CODES[status.code],
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
    raise AssertionError("context.abort returned")  # pragma: no cover


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def add_to_server(servicer: InferenceServicer, server: Registry) -> None:
    """Register the service with no request deserializer: each method receives the raw bytes and parses them.

    gRPC's own deserialization failure would end the call UNKNOWN, and on a Session end every request in it.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session, response_serializer=pb.SessionResponse.SerializeToString
        ),
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, response_serializer=pb.GenerateResponse.SerializeToString
        ),
        "Synthesize": grpc.unary_stream_rpc_method_handler(
            servicer.Synthesize, response_serializer=pb.SynthesizeResponse.SerializeToString
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, response_serializer=pb.ListModelsResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class InferenceServicer:
    """Maps each RPC onto a Session; converters do the proto work, the session does the rest."""

    def __init__(
        self,
        router: Router,
        limits: LimitsConfig,
        lifecycle: Lifecycle,
        *,
        observer: Observer = NULL_OBSERVER,
        trailer: Callable[[], Metadata] | None = None,
    ) -> None:
        """`trailer`: trailing metadata for every one-shot call that ends well (the per-call ORCA report), or None."""
        self._router = router
        self._limits = limits
        self._lifecycle = lifecycle
        self._observer = observer
        self._trailer = trailer

    def _session(self) -> Session:
        # The call's tenant quota: the gate made it current in this call's task (transport/auth.py).
        return Session(self._router, self._limits, self._lifecycle, observer=self._observer, quota=current_quota())

    async def Session(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.SessionResponse]:
        commands = (await off_loop(frame, self._command) async for frame in request_iterator)
        async for response in self._serve(convert.session_response, context, commands=commands):
            yield response

    async def Generate(
        self, request: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.GenerateResponse]:
        async for response in self._serve(
            convert.generate_response, context, frame=request, to_start=self._generate_start
        ):
            yield response

    async def Synthesize(
        self, request: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        async for response in self._serve(
            convert.synthesize_response, context, frame=request, to_start=self._synthesize_start
        ):
            yield response

    async def ListModels(
        self, request: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListModelsResponse:
        try:
            convert.parse(request, pb.ListModelsRequest)
            return pb.ListModelsResponse(
                models=[convert.model(info, default) for info, default in self._router.models()]
            )
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, canonical(error))

    def _command(self, frame: bytes) -> Command:
        """One Session frame as a command; never raises, so one bad frame cannot end the session."""
        try:
            message = convert.parse(frame, pb.SessionRequest)
        except InvalidArgument as error:
            return Malformed("", error)
        try:
            return convert.session_command(message, self._limits)
        except Exception as error:  # a bug in conversion: this message alone fails
            return Malformed(clip(message.request_id), canonical(error))

    def _generate_start(self, frame: bytes) -> Start:
        message = convert.parse(frame, pb.GenerateRequest)
        return Start(_one_shot_id(message.request_id), convert.generate_spec(message.params, self._limits))

    def _synthesize_start(self, frame: bytes) -> Start:
        message = convert.parse(frame, pb.SynthesizeRequest)
        return Start(_one_shot_id(message.request_id), convert.synthesize_spec(message.params))

    async def _serve(
        self,
        to_proto: Callable[[Output], T],
        context: grpc.aio.ServicerContext[object, object],
        *,
        commands: AsyncIterator[Command] | None = None,
        frame: bytes = b"",
        to_start: Callable[[bytes], Start] | None = None,
    ) -> AsyncIterator[T]:
        """The responses of a session (`commands`) or of a one-shot RPC's single request (`frame`, `to_start`).

        One generator from the call to the session's outputs: each generator between them would cost every output
        a resumption. A one-shot frame that fails to parse is INVALID_ARGUMENT.
        """
        # aclosing: the session's cleanup (engine aborts) runs even when the call is cancelled mid-write.
        try:
            if to_start is None:
                assert commands is not None
                outputs = self._session().run(commands)
            else:
                outputs = self._session().run_one(await off_loop(frame, to_start))
            async with aclosing(outputs) as stream:  # type: ignore[type-var]
                async for output in stream:
                    yield to_proto(output)
            if to_start is not None and self._trailer is not None:
                context.set_trailing_metadata(self._trailer())
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, canonical(error))


def canonical(error: Exception) -> RilletError:
    """The error to send for `error`: a RilletError as it is; anything else is a bug, logged here (once): INTERNAL."""
    if isinstance(error, RilletError):
        return error
    log.error("unexpected error in the InferenceService transport", exc_info=error)
    return Internal("the server failed unexpectedly; the error is logged")


def _one_shot_id(given: str) -> str:
    """A one-shot request's id: the client's (for Abort; the session checks its length), or the server's own."""
    return given or f"{_ONE_SHOT_PREFIX}-{next(_one_shot_ids)}"


async def off_loop(frame: F, parse: Callable[[F], T]) -> T:
    """`parse(frame)`: inline when the frame is small, in a worker thread when large (PARSE_INLINE_MAX_BYTES)."""
    if len(frame) <= PARSE_INLINE_MAX_BYTES:
        return parse(frame)
    return await asyncio.to_thread(parse, frame)
