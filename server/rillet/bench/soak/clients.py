"""The soak's clients: each loops over the scenarios (drawn by weight) until the deadline, with a hang watch."""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from rillet.bench.soak.bad_input import bad_oneshot
from rillet.bench.soak.context import Soak
from rillet.bench.soak.oneshot import oneshot_generate, oneshot_synthesize
from rillet.bench.soak.sdk import sdk_scenario
from rillet.bench.soak.sessions import disconnect_scenario, session_scenario
from rillet.bench.soak.tally import WATCHED, describe
from rillet.bench.wire import Stream

Scenario = Callable[[Soak, random.Random, grpc.aio.Channel], Coroutine[Any, Any, None]]
SCENARIOS: tuple[tuple[Scenario, float], ...] = (
    (session_scenario, 0.45),
    (oneshot_generate, 0.15),
    (oneshot_synthesize, 0.1),
    (sdk_scenario, 0.15),
    (bad_oneshot, 0.05),
    (disconnect_scenario, 0.1),
)
"""Every scenario with its weight (the events count each by its function's name)."""


async def client(soak: Soak, index: int, channel: grpc.aio.Channel) -> None:
    """One client: scenarios until the deadline; one that hangs is cancelled and reported lost with its streams."""
    opts = soak.opts
    rng = random.Random(opts.seed * 100_003 + index)
    await asyncio.sleep(rng.uniform(0, opts.think_s))  # spread the first wave
    while time.monotonic() < soak.deadline:
        scenario = rng.choices([s for s, _ in SCENARIOS], [w for _, w in SCENARIOS])[0]
        soak.tally.events[f"scenario {scenario.__name__}"] += 1
        watched: list[Stream] = []
        WATCHED.set(watched)  # before the task: it copies this context, so its streams land in `watched`
        began = time.perf_counter()
        task = asyncio.create_task(scenario(soak, rng, channel))
        while not task.done():
            await asyncio.wait({task}, timeout=5.0)
            now = time.perf_counter()
            progress = max((s.last_at or s.started for s in watched), default=began)
            if task.done() or (now - progress < opts.hang_s and now - began < opts.scenario_timeout_s):
                continue
            open_streams = [describe(s, now) for s in watched if s.terminal is None] or ["none open"]
            soak.tally.lost.append(
                f"client {index}: {scenario.__name__} hung: no message for {now - progress:.0f}s, "
                f"{now - began:.0f}s in ({len(watched)} streams opened); open: {' | '.join(open_streams)}"
            )
            task.cancel()
            break
        try:
            await task
        except asyncio.CancelledError:
            pass  # hung, and recorded above
        except Exception as error:  # a bug in the soak or an unforeseen reply: recorded, the client goes on
            soak.tally.violation(
                f"client {index}: {scenario.__name__} raised {type(error).__name__}: {error}\n"
                + "".join(traceback.format_exception(error)[-3:])
            )
        await asyncio.sleep(rng.uniform(0, opts.think_s))
