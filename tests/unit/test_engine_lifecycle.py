"""EngineLifecycle: states move forward only, the first end is final, one refusal reason per state."""

from __future__ import annotations

import pytest

from rillet.server.engine.lifecycle import EngineLifecycle, State
from rillet.server.errors import EngineDead, RilletError, Unavailable
from rillet.server.types import ModelInfo, ModelKind

MODEL = ModelInfo(name="m", kind=ModelKind.TEXT_GENERATION, engine="fake")


def refusal(engine: EngineLifecycle) -> RilletError | None:
    try:
        engine.check_serving()
    except RilletError as error:
        return error
    return None


def test_identity_and_capacity_are_what_the_engine_was_built_with() -> None:
    engine = EngineLifecycle("fake", (MODEL,), 3)
    assert (engine.name, tuple(engine.models), engine.slots, engine.active) == ("fake", (MODEL,), 3, 0)
    assert engine.state is State.NEW


def assert_not_started(engine: EngineLifecycle) -> None:
    assert engine.healthy()
    error = refusal(engine)
    assert isinstance(error, Unavailable)
    assert (error.reason, error.message) == ("WARMING_UP", "the fake engine is not started")


def test_a_started_engine_serves_and_is_healthy_until_it_closes() -> None:
    engine = EngineLifecycle("fake", (MODEL,), 1)
    assert_not_started(engine)
    engine._mark_starting()
    assert engine.state is State.STARTING
    assert_not_started(engine)
    engine._mark_serving()
    assert engine.healthy()
    assert refusal(engine) is None
    engine._mark_closed()
    assert not engine.healthy()
    error = refusal(engine)
    assert isinstance(error, Unavailable)
    assert (error.reason, error.message) == ("SHUTTING_DOWN", "the fake engine is closed")


def test_a_dead_engine_refuses_with_engine_dead() -> None:
    engine = EngineLifecycle("fake", (MODEL,), 1)
    engine._mark_starting()
    engine._mark_dead()
    engine._mark_serving()  # a start that returns after the engine died does not revive it
    assert engine.state is State.DEAD
    assert not engine.healthy()
    assert isinstance(refusal(engine), EngineDead)


@pytest.mark.parametrize(("first", "then"), [(State.CLOSED, State.DEAD), (State.DEAD, State.CLOSED)])
def test_the_first_end_is_final(first: State, then: State) -> None:
    engine = EngineLifecycle("fake", (MODEL,), 1, state=State.SERVING)
    for end in (first, then):
        if end is State.CLOSED:
            engine._mark_closed()
        else:
            engine._mark_dead()
    assert engine.state is first


def test_a_second_start_is_refused() -> None:
    engine = EngineLifecycle("fake", (MODEL,), 1)
    engine._mark_starting()
    with pytest.raises(RuntimeError, match="already started"):
        engine._mark_starting()
