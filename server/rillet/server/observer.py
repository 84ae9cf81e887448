"""The RequestObserver hook: the lifecycle of every logical request, for telemetry and accounting to plug into."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from rillet.server.errors import RilletError
from rillet.server.types import AudioChunk, EngineRequest, Finished, ModelInfo, Start, TokenDelta

__all__ = ["NULL_OBSERVER", "Batching", "Observer", "RequestObserver", "StepListener", "StepReporter"]


class RequestObserver(Protocol):
    """Hears one request's lifecycle, in this order, each at most once unless noted.

    `queued` (validated, waiting for an engine slot) → `admitted` (holds a slot) → `first_output` → `output`
    (every delta or chunk, as the engine produces it) → exactly one of `finished`, `cancelled` or `failed`.
    A request that fails validation goes straight from creation to `failed`. Calls run on the event loop, in the
    request's own flow: they must be quick and must not raise (an observer's bug must not fail a request).
    """

    def queued(self, model: ModelInfo, request: EngineRequest, source: RequestObserver | None) -> None:
        """Validated and waiting for admission; `source` is the generation a chained synthesis speaks."""

    def admitted(self) -> None:
        """The request holds an engine slot and its engine stream opens."""

    def first_output(self) -> None:
        """The engine produced the request's first delta or audio chunk."""

    def output(self, event: TokenDelta | AudioChunk) -> None:
        """The engine produced an output (called for the first one too)."""

    def finished(self, result: Finished) -> None:
        """Terminal: the request completed (stop, length or stop sequence)."""

    def cancelled(self, result: Finished) -> None:
        """Terminal: the client, its call ending, or the request it took text from, cancelled it."""

    def failed(self, error: RilletError) -> None:
        """Terminal: the request failed with `error` (validation, timeout, stall, shutdown, engine)."""


class Observer(Protocol):
    """Creates a RequestObserver per request; hears session-level events that belong to no request."""

    def request(self, start: Start) -> RequestObserver:
        """A start message arrived (before validation); the returned observer hears the rest."""
        ...

    def rejected(self, error: RilletError) -> None:
        """A client message changed nothing and was answered with `rejected`."""


class _NullRequestObserver:
    """Hears nothing: the default, free when no telemetry is configured."""

    def queued(self, model: ModelInfo, request: EngineRequest, source: RequestObserver | None) -> None:
        return None

    def admitted(self) -> None:
        return None

    def first_output(self) -> None:
        return None

    def output(self, event: TokenDelta | AudioChunk) -> None:
        return None

    def finished(self, result: Finished) -> None:
        return None

    def cancelled(self, result: Finished) -> None:
        return None

    def failed(self, error: RilletError) -> None:
        return None


class _NullObserver:
    _request = _NullRequestObserver()

    def request(self, start: Start) -> RequestObserver:
        return self._request

    def rejected(self, error: RilletError) -> None:
        return None


NULL_OBSERVER: Observer = _NullObserver()
"""The observer used when none is configured."""


StepListener = Callable[[int], None]
"""Hears one engine step: how many sequences it advanced. Called on the engine's own thread: quick, thread-safe."""


class StepReporter:
    """Where a batching engine reports each step's batch size; telemetry listens, subscribed at the entrypoint.

    Free while nobody listens (a loop over an empty tuple per step). Listeners are added before serving starts;
    `step` may run on any thread.
    """

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: tuple[StepListener, ...] = ()

    def listen(self, listener: StepListener) -> None:
        """Call `listener(batch_size)` after every step from now on."""
        self._listeners = (*self._listeners, listener)

    def step(self, batch_size: int) -> None:
        """One step advanced `batch_size` sequences (called by the engine's step loop, never for warm-up)."""
        for listener in self._listeners:
            listener(batch_size)


@runtime_checkable
class Batching(Protocol):
    """An engine that runs its own step loop (continuous batching) and reports every step's batch size."""

    @property
    def step_reporter(self) -> StepReporter:
        """The reporter its step loop calls."""
        ...
