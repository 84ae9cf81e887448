"""The server's table of in-flight requests: tenant-scoped lookups, each request released exactly once."""

from __future__ import annotations

import asyncio

from rillet.server.observer import NULL_OBSERVER
from rillet.server.session.outbox import OutboundBudget, Outbox
from rillet.server.session.registry import RequestRegistry
from rillet.server.session.request import CancelReason, Request


def request(request_id: str) -> Request:
    outbox = Outbox(request_id, OutboundBudget(1 << 20), 1 << 16, lambda _: None)
    made = Request(request_id, outbox, NULL_OBSERVER.request(None))  # type: ignore[arg-type]
    made.task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    return made


async def test_abort_reaches_every_request_of_the_tenant_under_the_id_and_no_other_tenants() -> None:
    registry = RequestRegistry()
    mine_a, mine_b, other = request("job"), request("job"), request("job")
    registry.add("acme", mine_a)
    registry.add("acme", mine_b)
    registry.add("globex", other)
    assert registry.abort("acme", "job") == ["job", "job"]
    assert mine_a.cancel_reason is mine_b.cancel_reason is CancelReason.ABORTED
    assert other.cancel_reason is None
    assert registry.abort("acme", "job") == []  # already cancelled: not counted twice
    assert registry.abort("initech", "job") == []
    other.task.cancel()  # type: ignore[union-attr]


async def test_abort_all_is_the_tenants_and_only_theirs() -> None:
    registry = RequestRegistry()
    mine, also_mine, other = request("a"), request("b"), request("a")
    for tenant, r in (("acme", mine), ("acme", also_mine), ("globex", other)):
        registry.add(tenant, r)
    assert sorted(registry.abort_all("acme")) == ["a", "b"]
    assert other.cancel_reason is None
    other.task.cancel()  # type: ignore[union-attr]


async def test_release_is_once_and_never_removes_a_newer_request_with_the_same_id() -> None:
    registry = RequestRegistry()
    old, new = request("r"), request("r")
    registry.add("", old)
    registry.add("", new)
    registry.release("", old)
    registry.release("", old)  # the session's second way of forgetting it: nothing
    assert len(registry) == 1
    assert registry.abort("", "r") == ["r"]
    assert new.cancel_reason is CancelReason.ABORTED
    assert old.cancel_reason is None
    registry.release("", new)
    assert len(registry) == 0
    assert registry._tenants == {}  # nothing left behind for idle tenants
    registry.release("", request("never-added"))
    assert len(registry) == 0
    old.task.cancel()  # type: ignore[union-attr]
