"""The one error model of the server: domain errors, each bound to a canonical gRPC code and a reason.

RilletError
├── InvalidArgument      INVALID_ARGUMENT    bad field, empty prompt, limits exceeded
├── NotFound             NOT_FOUND           unknown model, voice or request id
├── AlreadyExists        ALREADY_EXISTS      duplicate request id in a session
├── ResourceExhausted    RESOURCE_EXHAUSTED  over a limit: a queue, a tenant's, the server's (carries a retry hint)
├── Unavailable          UNAVAILABLE         starting, draining, engine not ready
├── DeadlineExceeded     DEADLINE_EXCEEDED   a request's own timeout passed
├── Unauthenticated      UNAUTHENTICATED     missing or bad credentials
└── Internal             INTERNAL            a bug or an engine failure for this request
    └── EngineDead       INTERNAL            the engine cannot serve anything any more (fatal)

ConfigurationError   (not a RilletError) the server cannot start as configured; never sent to a client

Per-request errors travel in-band on a session; only whole-call failures become the RPC status.
The transport alone turns these into google.rpc.Status (with ErrorInfo and RetryInfo).
Every reason is a `reasons.Reason` (the catalogue: its code, when it is sent, what a client should do).
A client's string echoed in a message or in metadata always goes through `clip`, so no reply grows with its input.
"""

from __future__ import annotations

from collections.abc import Mapping

from rillet.server.reasons import Code, Reason

__all__ = [
    "AlreadyExists",
    "Code",
    "ConfigurationError",
    "DeadlineExceeded",
    "EngineDead",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "RilletError",
    "Unauthenticated",
    "Unavailable",
    "clip",
]

ECHO_CHARS = 64
"""How much of a client's string an error message or metadata value repeats."""


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, marked with a trailing "…" when cut: safe to echo whatever its size."""
    return text if len(text) <= limit else text[:limit] + "…"


class RilletError(Exception):
    """Base of every domain error. `reason` is a stable UPPER_SNAKE_CASE identifier clients can match on.

    A `Reason` member; typed `str` while the engines named in tests/unit/test_reasons.py still pass literals.
    """

    code: Code = Code.INTERNAL
    default_reason: str = Reason.INTERNAL

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(RilletError):
    """The request is malformed or outside the server's limits; retrying it unchanged will fail again."""

    code = Code.INVALID_ARGUMENT
    default_reason = Reason.INVALID_ARGUMENT

    def __init__(
        self, message: str, *, field: str = "", reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        meta = dict(metadata or {})
        if field:
            meta.setdefault("field", field)
        super().__init__(message, reason=reason, metadata=meta)
        self.field = field


class NotFound(RilletError):
    """A named model, voice or request does not exist."""

    code = Code.NOT_FOUND
    default_reason = Reason.NOT_FOUND


class AlreadyExists(RilletError):
    """A request id is already in flight in this session."""

    code = Code.ALREADY_EXISTS
    default_reason = Reason.DUPLICATE_REQUEST_ID


class ResourceExhausted(RilletError):
    """Over capacity. `retry_after` (seconds) is a hint for when a retry may succeed."""

    code = Code.RESOURCE_EXHAUSTED
    default_reason = Reason.QUEUE_FULL

    def __init__(
        self, message: str, *, retry_after: float, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Unavailable(RilletError):
    """The server cannot take work right now (starting, draining); retry elsewhere or later."""

    code = Code.UNAVAILABLE
    default_reason = Reason.UNAVAILABLE


class DeadlineExceeded(RilletError):
    """A request's own timeout passed before it finished."""

    code = Code.DEADLINE_EXCEEDED
    default_reason = Reason.REQUEST_TIMEOUT


class Unauthenticated(RilletError):
    """Credentials are missing or wrong."""

    code = Code.UNAUTHENTICATED
    default_reason = Reason.UNAUTHENTICATED


class Internal(RilletError):
    """A failure that is the server's fault; the request ended, other requests are unaffected."""

    code = Code.INTERNAL
    default_reason = Reason.INTERNAL


class EngineDead(Internal):
    """The engine can no longer serve any request: health flips to NOT_SERVING and the server drains."""

    default_reason = Reason.ENGINE_DEAD


class ConfigurationError(Exception):
    """The server cannot start as configured: a setting, or a file, package or device one names, is wrong or missing.

    Raised while the server is built or its engines start, before anything is served, and never sent to a client
    (it has no code and no reason): `rillet serve` prints the message and exits with status 2, as for invalid
    settings or tenants. An engine that fails at start for another reason raises EngineDead (status 1).
    """
