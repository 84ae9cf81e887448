"""An engine's lifecycle: its state, identity and capacity (name, models, slots, active), its health, its refusals."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from rillet.server.errors import EngineDead, Unavailable
from rillet.server.reasons import Reason
from rillet.server.types import ModelInfo

__all__ = ["EngineLifecycle", "State", "closed_error", "dead_error", "not_started_error"]


class State(enum.Enum):
    """Where an engine is in its life."""

    NEW = "new"
    """Built; `start` not called yet."""
    STARTING = "starting"
    """`start` is loading and warming up."""
    SERVING = "serving"
    """Streams run."""
    CLOSED = "closed"
    """`aclose` was called: nothing runs any more."""
    DEAD = "dead"
    """The start failed or the engine crashed: nothing runs any more (EngineDead)."""


def not_started_error(name: str) -> Unavailable:
    """A stream asked of an engine not yet serving (its `start` has not finished)."""
    return Unavailable(f"the {name} engine is not started", reason=Reason.WARMING_UP)


def closed_error(name: str) -> Unavailable:
    """A stream asked of, or cut short by, a closed engine."""
    return Unavailable(f"the {name} engine is closed", reason=Reason.SHUTTING_DOWN)


def dead_error(name: str, why: str = "") -> EngineDead:
    """A stream asked of, or cut short by, an engine that can serve no more."""
    return EngineDead(f"the {name} engine {why or 'can serve no more'}")


class EngineLifecycle:
    """What every engine exposes beside its streams (engine/base.py's EngineBase), kept in one place.

    Invariants: the state moves forward only, NEW → STARTING → SERVING, and the first of CLOSED or DEAD reached is
    final (a crash while closing leaves it CLOSED; a close after a crash leaves it DEAD); `healthy()` is True exactly
    until then. A stream asked of an engine that is not SERVING is refused with one reason per condition, the same
    reasons the server gives for itself: WARMING_UP (UNAVAILABLE: NEW or STARTING, as the router answers until every
    engine has started), SHUTTING_DOWN (UNAVAILABLE: CLOSED, as a draining session answers) and ENGINE_DEAD
    (INTERNAL). `active` is written by whatever runs the engine's work (an engine thread may write it: a plain int).
    """

    def __init__(self, name: str, models: Sequence[ModelInfo], slots: int, *, state: State = State.NEW) -> None:
        self._name = name
        self._models = tuple(models)
        self._slots = slots
        self._state = state
        self._active = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def models(self) -> Sequence[ModelInfo]:
        return self._models

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def active(self) -> int:
        return self._active

    @property
    def state(self) -> State:
        return self._state

    def healthy(self) -> bool:
        return self._state is not State.CLOSED and self._state is not State.DEAD

    def check_serving(self) -> None:
        """Raise why a new stream cannot run now (one reason per state) unless the engine is SERVING."""
        match self._state:
            case State.SERVING:
                return
            case State.NEW | State.STARTING:
                raise not_started_error(self._name)
            case State.CLOSED:
                raise closed_error(self._name)
            case State.DEAD:
                raise dead_error(self._name)

    def _mark_starting(self) -> None:
        """NEW → STARTING; a second `start` is a programming error."""
        if self._state is not State.NEW:
            raise RuntimeError(f"the {self._name} engine was already started")
        self._state = State.STARTING

    def _mark_serving(self) -> None:
        """STARTING → SERVING (an engine that died or was closed meanwhile stays so)."""
        if self._state is State.STARTING:
            self._state = State.SERVING

    def _mark_closed(self) -> None:
        if self.healthy():
            self._state = State.CLOSED

    def _mark_dead(self) -> None:
        if self.healthy():
            self._state = State.DEAD
