"""The SDK's public surface is explicit: __all__ is sorted, complete, and every name in it is importable."""

from __future__ import annotations

import rillet.client

EXPECTED = {
    "AlreadyExistsError", "AudioChunk", "CancelledError", "ChatMessage", "Client", "DeadlineExceededError",
    "FinishReason", "Finished", "GenerateResult", "GenerateStream", "InternalError", "InvalidArgumentError", "Model",
    "ModelKind", "NotFoundError", "ProtocolError", "RequestStream", "ResourceExhaustedError", "RilletError",
    "Session", "SynthesizeResult", "SynthesizeStream", "TextCapabilities", "Timings", "TlsOptions", "TokenDelta",
    "TokenLogprob", "TokenLogprobs", "UnauthenticatedError", "UnavailableError", "UnknownError", "Usage",
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
