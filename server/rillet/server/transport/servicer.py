"""The InferenceService servicer: parse, delegate to a Session, emit. Nothing else lives here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import NoReturn, TypeVar

import grpc

from rillet.server.config import LimitsConfig
from rillet.server.errors import RilletError
from rillet.server.scheduler import Router
from rillet.server.session import Lifecycle, Session
from rillet.server.transport import convert
from rillet.server.types import Output, Start
from rillet.v1 import inference_service_pb2 as pb
from rillet.v1 import inference_service_pb2_grpc as pb_grpc

T = TypeVar("T")


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


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Maps each RPC onto a Session; converters do the proto work, the session does the rest."""

    def __init__(self, router: Router, limits: LimitsConfig, lifecycle: Lifecycle) -> None:
        self._router = router
        self._limits = limits
        self._lifecycle = lifecycle

    def _session(self) -> Session:
        return Session(self._router, self._limits, self._lifecycle)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.SessionResponse]:
        commands = (convert.session_command(message) async for message in request_iterator)
        async for response in self._serve(self._session().run(commands), convert.session_response, context):
            yield response

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.GenerateResponse]:
        start = Start(_one_shot_id(), convert.generate_spec(request.params))
        async for response in self._serve(self._session().run_one(start), convert.generate_response, context):
            yield response

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        start = Start(_one_shot_id(), convert.synthesize_spec(request.params))
        async for response in self._serve(self._session().run_one(start), convert.synthesize_response, context):
            yield response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[convert.model(info, default) for info, default in self._router.models()])

    @staticmethod
    async def _serve(
        outputs: AsyncIterator[Output],
        to_proto: Callable[[Output], T],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[T]:
        # aclosing: the session's cleanup (engine aborts) runs even when the call is cancelled mid-write.
        try:
            async with aclosing(outputs) as stream:  # type: ignore[type-var]
                async for output in stream:
                    yield to_proto(output)
        except RilletError as error:
            await abort(context, error)


def _one_shot_id() -> str:
    return uuid.uuid4().hex
