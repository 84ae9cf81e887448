"""A request's Timings from its engine's EngineFinished: queue, prefill, and the fallback to time to first output."""

from __future__ import annotations

from rillet.server.observer import NULL_OBSERVER
from rillet.server.session.outbox import OutboundBudget, Outbox
from rillet.server.session.request import Request
from rillet.server.types import EngineFinished, Finished, FinishReason, GenerateSpec, Start, Timings, Usage


def timings(event: EngineFinished) -> Timings:
    outbox = Outbox("r", OutboundBudget(1 << 20), 1 << 20, lambda _: None)
    request = Request("r", outbox, NULL_OBSERVER.request(Start("r", GenerateSpec())))
    request.admit()
    request.finish(event)
    (output,) = outbox.take()
    assert isinstance(output.payload, Finished)
    return output.payload.timings


def test_prefill_and_engine_queue_are_reported_as_the_engine_measured_them() -> None:
    result = timings(EngineFinished(FinishReason.LENGTH, Usage(), prefill_seconds=0.25, engine_queue_seconds=0.5))
    assert result.prefill == 0.25
    assert result.queue >= 0.5  # the engine's queue adds to the scheduler's


def test_an_engine_that_measures_only_its_time_to_first_output_reports_that_as_prefill() -> None:
    assert timings(EngineFinished(FinishReason.STOP, Usage(), first_output_seconds=0.75)).prefill == 0.75
    both = EngineFinished(FinishReason.STOP, Usage(), prefill_seconds=0.25, first_output_seconds=0.75)
    assert timings(both).prefill == 0.25  # the engine's own prefill, when it has one


def test_an_engine_that_measures_neither_leaves_prefill_unset() -> None:
    assert timings(EngineFinished(FinishReason.STOP, Usage())).prefill is None
