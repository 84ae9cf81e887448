"""Routing by load: the SDK's balanced channel weighs backends by their ORCA reports (gRPC's weighted_round_robin)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses

import pytest

from rillet.client import Client
from rillet.server.app import RilletServer
from rillet.server.load import ServerLoad
from tests.conftest import ServerFactory

CALLS = 600


def report_fixed(server: RilletServer, utilization: float) -> None:
    """Make the server report `utilization` at 10 requests per second, whatever it serves (its ORCA stream reads it)."""
    real = server.load.snapshot

    def fixed() -> ServerLoad:
        return dataclasses.replace(real(), utilization=utilization, requests_per_second=10.0)

    server.load.snapshot = fixed  # type: ignore[method-assign]


async def three(make_server: ServerFactory) -> list[RilletServer]:
    return [await make_server(synthetic={"model_name": f"backend-{n}"}, load={"min_interval_s": 0.2}) for n in range(3)]


async def split(client: Client, calls: int = CALLS) -> collections.Counter[str]:
    """Which backend answered each of `calls` ListModels calls (each names its model after its backend)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(calls):
        [model] = await client.list_models()
        seen[model.name] += 1
    return seen


@pytest.mark.timeout(60)
async def test_weighted_round_robin_sends_more_calls_where_utilization_is_lower(make_server: ServerFactory) -> None:
    busy, middling, idle = await three(make_server)
    for server, utilization in ((busy, 0.9), (middling, 0.3), (idle, 0.1)):
        report_fixed(server, utilization)
    async with Client.connect([f"127.0.0.1:{s.port}" for s in (busy, middling, idle)]) as client:
        async with asyncio.timeout(30):  # weights apply after the blackout (2 s) of continuous reports
            while True:
                seen = await split(client, 90)
                if seen["backend-2"] > 3 * seen["backend-0"]:
                    break
        seen = await split(client)
    # Weights are qps / utilization: 1 : 3 : 9 here (11, 33 and 100 per 144 calls).
    assert seen["backend-2"] > 2 * seen["backend-1"] > 2 * seen["backend-0"] > 0, seen
    assert sum(seen.values()) == CALLS


@pytest.mark.timeout(60)
async def test_unweighted_balancing_ignores_the_reports(make_server: ServerFactory) -> None:
    servers = await three(make_server)
    for server, utilization in zip(servers, (0.9, 0.3, 0.1), strict=True):
        report_fixed(server, utilization)
    async with Client.connect([f"127.0.0.1:{s.port}" for s in servers], weighted=False) as client:
        await asyncio.sleep(3)  # as long as the weighted test's blackout: reports would count by now
        seen = await split(client, 300)
    assert len(seen) == 3, seen
    assert max(seen.values()) - min(seen.values()) <= 3, seen  # round_robin: each in turn
