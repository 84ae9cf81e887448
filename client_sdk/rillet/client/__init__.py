"""Typed async client for Rillet: `async with Client.connect(target) as client: ...`."""

import typing as _typing
import warnings as _warnings

from rillet.client._channel import ChannelConfig, KeepAlive
from rillet.client._client import Client
from rillet.client._control import EngineInfo, EngineLoad, ServerInfo, ServerLoad, TokenCount
from rillet.client._errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    IncompleteOutputError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ProtocolError,
    RequestCancelledError,
    ResourceExhaustedError,
    RilletError,
    UnauthenticatedError,
    UnavailableError,
    UnknownError,
)
from rillet.client._options import GenerateOptions, SynthesizeOptions
from rillet.client._session import Session
from rillet.client._streams import GenerateStream, JsonModel, RequestStream, SynthesizeStream
from rillet.client._tls import TlsOptions
from rillet.client._types import (
    AudioChunk,
    AudioEncoding,
    ChatMessage,
    Finished,
    FinishReason,
    GenerateResult,
    Model,
    ModelKind,
    Priority,
    SpokenText,
    SynthesizeResult,
    TextCapabilities,
    Timings,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
    WordTiming,
)

__all__ = [
    "AlreadyExistsError",
    "AudioChunk",
    "AudioEncoding",
    "ChannelConfig",
    "ChatMessage",
    "Client",
    "DeadlineExceededError",
    "EngineInfo",
    "EngineLoad",
    "FinishReason",
    "Finished",
    "GenerateOptions",
    "GenerateResult",
    "GenerateStream",
    "IncompleteOutputError",
    "InternalError",
    "InvalidArgumentError",
    "JsonModel",
    "KeepAlive",
    "Model",
    "ModelKind",
    "NotFoundError",
    "Priority",
    "ProtocolError",
    "RequestCancelledError",
    "RequestStream",
    "ResourceExhaustedError",
    "RilletError",
    "ServerInfo",
    "ServerLoad",
    "Session",
    "SpokenText",
    "SynthesizeOptions",
    "SynthesizeResult",
    "SynthesizeStream",
    "TextCapabilities",
    "Timings",
    "TlsOptions",
    "TokenCount",
    "TokenDelta",
    "TokenLogprob",
    "TokenLogprobs",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownError",
    "Usage",
    "WordTiming",
]

_DEPRECATED = {"CancelledError": "RequestCancelledError"}
"""Old names still importable, with a DeprecationWarning: CancelledError shadowed asyncio.CancelledError."""

if not _typing.TYPE_CHECKING:  # hidden from type checkers, which then flag the old names instead of accepting any name

    def __getattr__(name: str) -> object:
        if name in _DEPRECATED:
            new = _DEPRECATED[name]
            _warnings.warn(f"rillet.client.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
            return globals()[new]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
