"""The soak's clients and scenarios, briefly, against the server on TEST engines: every stream verified, none lost."""

from __future__ import annotations

import asyncio
import time

from rillet.bench.soak.clients import SCENARIOS, client
from rillet.bench.soak.context import Soak, connect
from rillet.bench.soak.leaks import slot_check
from rillet.bench.soak.run import arguments
from rillet.bench.soak.tally import Tally
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from tests.conftest import ServerFactory
from tests.doubles import EchoSpeechEngine

OPTIONS = arguments().parse_args(["--think-s", "0.1", "--hang-s", "30", "--scenario-timeout-s", "60"])
"""The soak's own defaults, but a short pause between scenarios and a short hang watch."""


async def test_every_scenario_runs_clean_for_a_few_seconds(make_server: ServerFactory) -> None:
    engine = SyntheticEngine(SyntheticConfig(tokens_per_second=200, first_output_delay_s=0.01))
    server = await make_server([engine, EchoSpeechEngine()])
    target = f"127.0.0.1:{server.port}"
    tally = Tally()
    soak = Soak(OPTIONS, target, tally, chat=False)  # the synthetic engine has no chat template: chat is bad input
    soak.deadline = time.monotonic() + 2.0
    channels = [connect(target) for _ in range(4)]
    try:
        await asyncio.wait_for(asyncio.gather(*(client(soak, i, channels[i % 4]) for i in range(12))), 60)
    finally:
        for channel in channels:
            await channel.close()
    assert tally.lost == []
    assert tally.violations == []
    assert tally.streams_verified > 50
    assert {f"scenario {s.__name__}" for s, _ in SCENARIOS} <= tally.events.keys()  # seed 7: the first draws do
    assert tally.bad_input  # bad input was sent, and each got its expected answer
    assert tally.open_calls == 0
    check = await slot_check(target, "generate", 4, 8)
    assert check.ok(max_queue_s=1.0), check.problems
    assert check.reasons == ["FINISH_REASON_LENGTH"] * 4
