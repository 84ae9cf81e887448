"""The process-wide runtime choices `rillet serve` makes: the event loop and the collector's tuning."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from rillet.server.app import loop_factory, tune_collector
from rillet.server.config import EventLoopKind, Settings


def test_serve_runs_on_uvloop_by_default() -> None:
    factory = loop_factory(Settings().event_loop)
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        assert runner.run(asyncio.sleep(0, result=7)) == 7


def test_asyncio_loop_on_request() -> None:
    assert loop_factory(EventLoopKind.ASYNCIO) is None  # asyncio.Runner's default: the standard library's loop


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_tune_collector_freezes_startup_and_raises_the_young_threshold() -> None:
    older = gc.get_threshold()[1:]
    tune_collector(10_000)
    assert gc.get_freeze_count() > 0  # what existed at the call is out of every later collection
    assert gc.get_threshold() == (10_000, *older)


@pytest.mark.usefixtures("restored_collector")
def test_tune_collector_zero_keeps_pythons_threshold() -> None:
    before = gc.get_threshold()
    tune_collector(0)
    assert gc.get_threshold() == before
