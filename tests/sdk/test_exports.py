"""The SDK's public surface is explicit: __all__ is sorted, complete, and every name in it is importable."""

from __future__ import annotations

import asyncio

import pytest

import rillet.client

EXPECTED = {
    "AlreadyExistsError", "AudioChunk", "AudioEncoding", "ChannelConfig", "ChatMessage", "Client",
    "DeadlineExceededError", "FinishReason", "Finished", "GenerateOptions", "GenerateResult", "GenerateStream",
    "IncompleteOutputError", "InternalError", "InvalidArgumentError", "JsonModel", "KeepAlive", "Model", "ModelKind",
    "NotFoundError", "ProtocolError", "RequestCancelledError", "RequestStream", "ResourceExhaustedError",
    "RilletError", "Session", "SpokenText", "SynthesizeOptions", "SynthesizeResult", "SynthesizeStream",
    "TextCapabilities", "Timings", "TlsOptions", "TokenDelta", "TokenLogprob", "TokenLogprobs", "UnauthenticatedError",
    "UnavailableError", "UnknownError", "Usage", "WordTiming", "EngineInfo", "EngineLoad", "Priority", "ServerInfo",
    "ServerLoad", "TokenCount",
}  # fmt: skip


def test_all_is_exactly_the_public_surface() -> None:
    assert set(rillet.client.__all__) == EXPECTED
    assert list(rillet.client.__all__) == sorted(rillet.client.__all__)
    public = {n for n in vars(rillet.client) if not n.startswith("_")}
    assert public == EXPECTED
    for name in rillet.client.__all__:
        assert getattr(rillet.client, name).__module__.startswith("rillet.client._")


def test_errors_subclass_one_base() -> None:
    for name in rillet.client.__all__:
        obj = getattr(rillet.client, name)
        if name.endswith("Error"):
            assert issubclass(obj, rillet.client.RilletError)


def test_the_old_cancelled_error_name_still_imports_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="use RequestCancelledError"):
        from rillet.client import CancelledError  # type: ignore[attr-defined]
    assert CancelledError is rillet.client.RequestCancelledError
    assert not issubclass(CancelledError, asyncio.CancelledError)
    with pytest.raises(AttributeError):
        rillet.client.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
