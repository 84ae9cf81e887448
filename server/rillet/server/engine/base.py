"""The Engine protocol every backend implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from rillet.server.types import EngineEvent, EngineRequest, ModelInfo


class Engine(Protocol):
    """A backend that turns requests into streams of output events.

    Contract:
    - `stream(request)` returns an async iterator that yields outputs (TokenDelta or AudioChunk) and then exactly
      one EngineFinished, or raises a RilletError before finishing. Validation errors specific to the engine
      (prompt longer than the context, ...) are raised before the first output.
    - Cancellation has one path: closing the iterator (aclose, or cancelling the task awaiting it) aborts the
      request inside the engine and frees what it held; `active` then drops within one engine step.
    - The scheduler admits at most `slots` concurrent streams; an engine need not queue beyond that.
    - Engine work never runs on the event loop.
    """

    @property
    def name(self) -> str:
        """Engine kind, e.g. "llamacpp" or "synthetic"."""
        ...

    @property
    def models(self) -> Sequence[ModelInfo]:
        """Models or voices served; the first one of each kind is that kind's default."""
        ...

    @property
    def slots(self) -> int:
        """How many requests the engine runs at once."""
        ...

    @property
    def active(self) -> int:
        """Requests currently holding engine resources (a slot, KV cache, a worker)."""
        ...

    async def start(self) -> None:
        """Load and warm up; raises if the engine cannot serve."""
        ...

    async def aclose(self) -> None:
        """Abort everything and release all resources."""
        ...

    def healthy(self) -> bool:
        """False once the engine can no longer serve (EngineDead)."""
        ...

    def stream(self, request: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Run one request; see the class docstring for the contract."""
        ...
