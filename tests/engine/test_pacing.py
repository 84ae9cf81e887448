"""The prefill pacer on given step times (no model): the batch, the bounded chunk, the floor, the model it learns."""

from __future__ import annotations

import pytest

from rillet.server.engine.llamacpp.pacing import OUTLIER_FACTOR, PrefillPacer


def measured(*, batch: int = 512, floor: int = 16, stretch: float = 2.0) -> PrefillPacer:
    """A pacer that has seen 4 decodes take 40 ms alone, and 100 prompt tokens add 50 ms beside them."""
    pacer = PrefillPacer(batch=batch, floor=floor, stretch=stretch, smoothing=1.0)
    pacer.observe(4, 0, 0.040)
    pacer.observe(4, 100, 0.090)
    return pacer


def test_with_nothing_decoding_a_step_takes_the_whole_batch() -> None:
    pacer = measured()
    assert pacer.budget(0) == 512
    assert PrefillPacer(batch=2048, floor=16, stretch=2.0).budget(0) == 2048  # measured or not


def test_beside_decodes_the_chunk_keeps_the_step_within_the_stretch() -> None:
    pacer = measured()
    # 0.5 ms a prompt token; 40 ms of room at 2x a 40 ms decode step: 80 tokens
    assert pacer.budget(4) == 80
    assert measured(stretch=1.5).budget(4) == 40
    assert measured(stretch=3.0).budget(4) == 160


def test_the_floor_and_the_batch_bound_the_chunk() -> None:
    assert measured(floor=120).budget(4) == 120  # progress beats the gap bound
    assert measured(stretch=1.0).budget(4) == 16
    assert measured(batch=64, floor=16, stretch=10.0).budget(4) == 64


def test_decodes_that_are_not_latency_sensitive_use_up_the_room_first() -> None:
    pacer = measured()
    pacer.observe(2, 0, 0.025)  # 2 decodes alone: 25 ms; 4: 40 ms
    assert pacer.budget(4, sensitive=2) == 20  # 2 x 25 ms less the 40 ms step leaves 10 ms: 20 tokens at 0.5 ms
    assert pacer.budget(4, sensitive=4) == pacer.budget(4) == 80
    pacer.observe(1, 0, 0.015)
    assert pacer.budget(4, sensitive=1) == 16  # 30 ms is less than the 40 ms step: the floor
    assert pacer.budget(4, sensitive=1, floor=False) == 1


def test_without_the_floor_the_gap_bound_alone_sizes_the_chunk_at_least_one_token() -> None:
    assert measured(floor=120).budget(4, floor=False) == 80  # the bound, not the floor
    assert measured(stretch=1.0).budget(4, floor=False) == 1  # no room at all: one token, still progress
    assert PrefillPacer(batch=512, floor=64, stretch=2.0).budget(4, floor=False) == 1  # not measured yet


def test_before_anything_is_measured_beside_decodes_only_the_floor_is_taken() -> None:
    pacer = PrefillPacer(batch=512, floor=32, stretch=2.0)
    assert pacer.budget(3) == 32
    pacer.observe(3, 0, 0.030)
    assert pacer.budget(3) == 32  # a decode step alone says nothing of a prompt token's cost
    pacer.observe(0, 400, 0.200)  # prompt tokens alone: 0.5 ms each, until measured beside decodes
    assert pacer.budget(3) == 60


def test_a_count_of_decodes_never_measured_alone_borrows_the_nearest() -> None:
    pacer = measured()
    pacer.observe(8, 0, 0.080)
    assert pacer.decode_seconds(5) == pytest.approx(0.040)
    assert pacer.decode_seconds(6) == pytest.approx(0.040)  # a tie goes to the smaller count
    assert pacer.decode_seconds(7) == pytest.approx(0.080)
    assert pacer.budget(7) == 160  # 80 ms of room at 0.5 ms a token


def test_a_slow_step_moves_the_estimate_by_the_smoothing_only() -> None:
    pacer = PrefillPacer(batch=512, floor=16, stretch=2.0, smoothing=0.25)
    pacer.observe(4, 0, 0.040)
    pacer.observe(4, 100, 0.090)
    assert pacer.budget(4) == 80
    pacer.observe(4, 100, 0.540)  # another process took the core for one step: counted as 3 x its 90 ms due
    assert pacer.token_seconds() == pytest.approx((0.050 + 0.25 * (3 * 0.090 - 0.040 - 0.050)) / 100)
    assert 16 < pacer.budget(4) < 80
    for _ in range(60):
        pacer.observe(4, 100, 0.090)
    assert pacer.budget(4) in (79, 80)  # and it comes back


def test_steps_costing_more_shrink_the_chunk_and_cheaper_ones_grow_it() -> None:
    pacer = measured()
    pacer.observe(4, 80, 0.040 + 80 * 0.001)  # 1 ms a token now
    assert pacer.budget(4) == 40
    pacer.observe(4, 40, 0.040 + 40 * 0.00025)
    assert pacer.budget(4) == 160


def test_clear_forgets_the_measurements() -> None:
    pacer = measured()
    pacer.clear()
    assert pacer.budget(4) == 16
    assert pacer.decode_seconds(4) is None
    assert pacer.token_seconds() is None


@pytest.mark.parametrize(
    ("floor", "batch", "stretch", "match"),
    [(0, 10, 2.0, "floor"), (20, 10, 2.0, "floor"), (8, 10, 0.5, "stretch")],
)
def test_nonsense_settings_are_refused(floor: int, batch: int, stretch: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrefillPacer(batch=batch, floor=floor, stretch=stretch)


def test_a_step_stalled_by_another_process_counts_as_at_most_a_few_times_its_prediction() -> None:
    pacer = measured()
    assert pacer.predict(4, 100) == pytest.approx(0.090)
    pacer.observe(4, 0, 4.0)  # a decode step that took 100 times its due: counted as OUTLIER_FACTOR times
    assert pacer.decode_seconds(4) == pytest.approx(OUTLIER_FACTOR * 0.040)
    stalled = measured()
    stalled.observe(4, 100, 9.0)  # 100 prompt tokens beside them stalled: counted as 3 x 90 ms, not 9 s
    assert stalled.token_seconds() == pytest.approx((OUTLIER_FACTOR * 0.090 - 0.040) / 100)
    assert stalled.budget(4) > stalled.floor  # one stall leaves room above the floor; unclipped it would be 16
    assert PrefillPacer(batch=512, floor=16, stretch=2.0).predict(4, 0) is None  # nothing measured: nothing clipped
