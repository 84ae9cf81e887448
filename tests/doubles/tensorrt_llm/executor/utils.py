"""Mirror of `tensorrt_llm/executor/utils.py` (1.2.1): `RequestError` and `has_event_loop`."""

from __future__ import annotations

import asyncio


class RequestError(RuntimeError):
    """The error raised when the request is failed."""


def has_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
