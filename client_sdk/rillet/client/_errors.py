"""The SDK's exceptions, one per canonical status code, built from a google.rpc.Status or a failed call.

RilletError
├── InvalidArgumentError      INVALID_ARGUMENT
├── NotFoundError             NOT_FOUND
├── AlreadyExistsError        ALREADY_EXISTS
├── ResourceExhaustedError    RESOURCE_EXHAUSTED (retry_after set when the server sent RetryInfo)
├── UnavailableError          UNAVAILABLE
├── DeadlineExceededError     DEADLINE_EXCEEDED
├── RequestCancelledError     CANCELLED
├── UnauthenticatedError      UNAUTHENTICATED
├── InternalError             INTERNAL
├── UnknownError              any other code
├── ProtocolError             the server broke the stream contract (sequence gap, unexpected message)
└── IncompleteOutputError     OK: the call succeeded, but `GenerateStream.parse` got a constrained output that ended
                              before its constraint accepted it (reason LENGTH or STOP_SEQUENCE; also a ValueError)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from rillet.client._types import GenerateResult


class RilletError(Exception):
    """A failed request or call. `reason` and `metadata` come from the server's google.rpc.ErrorInfo.

    `client_message_index`, on a session's rejection (`Session.rejections`, or a refused start): which of the
    session's messages the server could not apply, counting from 0 every message the session sent in order (its
    starts, cancels, appended texts and ends of input). None on any other error.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        request_id: str = "",
        client_message_index: int | None = None,
    ) -> None:
        super().__init__(f"{self.code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after
        self.request_id = request_id
        self.client_message_index = client_message_index


class InvalidArgumentError(RilletError):
    """The request is malformed or outside the server's limits."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(RilletError):
    """A named model, voice or request does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(RilletError):
    """A request id is already in flight in the session."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(RilletError):
    """The server is over capacity; `retry_after` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(RilletError):
    """The server is starting, draining or unreachable."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(RilletError):
    """The call's deadline or the request's timeout passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestCancelledError(RilletError):
    """The call or request was cancelled (named apart from asyncio.CancelledError, which cancels a task)."""

    code = grpc.StatusCode.CANCELLED


class UnauthenticatedError(RilletError):
    """Credentials are missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


class InternalError(RilletError):
    """The server failed."""

    code = grpc.StatusCode.INTERNAL


class UnknownError(RilletError):
    """A status code the SDK has no class for."""

    code = grpc.StatusCode.UNKNOWN


class ProtocolError(RilletError):
    """The server broke the stream contract (a sequence gap, a message for an unknown request)."""

    code = grpc.StatusCode.INTERNAL


class IncompleteOutputError(RilletError, ValueError):
    """A constrained output that may be only a prefix of one its constraint accepts: `result` holds it all.

    Not a failed call (its code is OK): the request ended by max_tokens or a stop string before the output was
    complete, so it cannot be parsed. `reason` is the finish reason's name: LENGTH or STOP_SEQUENCE.
    """

    code = grpc.StatusCode.OK

    def __init__(self, result: GenerateResult) -> None:
        reason = result.finished.reason.name
        super().__init__(f"the output ended before its constraint accepted it: {result.text[:200]!r}", reason=reason)
        self.result = result


_BY_CODE: dict[grpc.StatusCode, type[RilletError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        RequestCancelledError,
        UnauthenticatedError,
        InternalError,
    )
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_from_status(
    status: status_pb2.Status, *, request_id: str = "", client_message_index: int | None = None
) -> RilletError:
    """The exception for a google.rpc.Status, with ErrorInfo and RetryInfo unpacked."""
    reason, metadata, retry_after = "", {}, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):  # type: ignore[arg-type]
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):  # type: ignore[arg-type]
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(_CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN), UnknownError)
    return cls(
        status.message,
        reason=reason,
        metadata=metadata,
        retry_after=retry_after,
        request_id=request_id,
        client_message_index=client_message_index,
    )


def error_from_rpc(error: grpc.aio.AioRpcError) -> RilletError:
    """The exception for a failed call, using the rich status in its trailers when the server sent one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return error_from_status(status_pb2.Status.FromString(value))
    cls = _BY_CODE.get(error.code(), UnknownError)
    return cls(error.details() or "")
