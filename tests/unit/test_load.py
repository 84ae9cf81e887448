"""The load every reader sees: utilization from slots, queue and KV cache; rates over the recent window."""

from __future__ import annotations

import pytest

from rillet.server.config import SchedulerConfig, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.load import LoadBoard, utilization
from rillet.server.scheduler import Router


class KvEngine(SyntheticEngine):
    """The synthetic engine with a KV cache to report (engine.base.KvCacheReporting)."""

    kv = 0.0

    def kv_cache_utilization(self) -> float:
        return self.kv


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_utilization_is_the_larger_of_occupancy_and_kv_capped_at_one() -> None:
    assert utilization(running=2, waiting=0, slots=8, kv_cache=None) == 0.25
    assert utilization(running=2, waiting=0, slots=8, kv_cache=0.5) == 0.5
    assert utilization(running=8, waiting=3, slots=8, kv_cache=0.1) == 1.0  # requests wait: saturated
    assert utilization(running=0, waiting=0, slots=8, kv_cache=None) == 0.0


async def test_snapshot_reads_queues_engines_and_rates_over_the_window() -> None:
    engine = KvEngine(SyntheticConfig(slots=4))
    router = Router([engine], SchedulerConfig())
    clock, cpu = Clock(), Clock()
    board = LoadBoard(router, window_s=10.0, open_calls=lambda: 3, draining=lambda: False, clock=clock, cpu_clock=cpu)
    assert board.snapshot().engines == ()  # warming up: no engines yet
    await router.start()
    try:
        [queue] = router.queues()
        queue.throughput.ended(tokens=40, characters=0)
        queue.throughput.ended(tokens=60, characters=0)
        engine.kv = 0.75
        clock.now += 2.0
        cpu.now += 1.0
        load = board.snapshot()
        [text] = load.engines
        assert (text.engine, text.running, text.waiting, text.slots) == ("synthetic", 0, 0, 4)
        assert text.kv_cache_utilization == 0.75
        assert text.utilization == load.utilization == 0.75
        assert text.requests_per_second == pytest.approx(1.0)  # 2 requests in the 2 s since the first sample
        assert text.tokens_per_second == pytest.approx(50.0)
        assert load.requests_per_second == pytest.approx(1.0)
        assert load.cpu_utilization == pytest.approx(0.5 / board._cores)
        assert (load.open_calls, load.draining) == (3, False)
        [gauges] = board.gauges()
        assert (gauges.engine, gauges.running, gauges.waiting, gauges.kv_cache_utilization) == ("synthetic", 0, 0, 0.75)

        # Twenty seconds later with nothing new: the window has moved past the two requests.
        for _ in range(40):
            clock.now += 0.5
            board.snapshot()
        assert board.snapshot().engines[0].requests_per_second == 0.0
    finally:
        await router.aclose()
