"""ThreadGovernor: all cores while others leave them free, fewer at once when they don't, back only when calm."""

from __future__ import annotations

from rillet.server.engine.llamacpp import CpuSample, ThreadGovernor


class FakeCpu:
    """Cumulative CPU seconds that the test advances: other processes' and ours."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.ours = 0.0

    def run(self, seconds: float, *, others: float, ours: float) -> None:
        self.busy += seconds * (others + ours)
        self.ours += seconds * ours

    def sample(self) -> CpuSample:
        return CpuSample(self.busy, self.ours)


def test_drops_a_thread_per_busy_core_and_recovers_after_calm_windows() -> None:
    cpu = FakeCpu()
    governor = ThreadGovernor(2, interval_s=1.0, calm_windows=2, sample=cpu.sample)
    assert governor.observe(0.0) is None  # the first sample only starts the measure
    cpu.run(1.0, others=0.0, ours=2.0)
    assert governor.observe(1.0) is None  # idle neighbours: keep both threads
    cpu.run(1.0, others=1.0, ours=1.0)  # another process keeps a core busy
    assert governor.observe(2.0) == 1
    cpu.run(1.0, others=0.0, ours=1.0)
    assert governor.observe(3.0) is None  # one calm window is not enough
    cpu.run(1.0, others=0.0, ours=1.0)
    assert governor.observe(4.0) == 2
    assert governor.threads == 2


def test_never_below_one_thread_and_idle_gaps_restart_the_measure() -> None:
    cpu = FakeCpu()
    governor = ThreadGovernor(2, interval_s=1.0, sample=cpu.sample)
    governor.observe(0.0)
    cpu.run(1.0, others=2.0, ours=0.5)
    assert governor.observe(1.0) == 1
    cpu.run(10.0, others=0.0, ours=0.0)
    assert governor.observe(11.0) is None  # the engine sat idle: no verdict from that window
    assert governor.observe(11.5) is None  # within the interval: no new sample
    assert governor.threads == 1
