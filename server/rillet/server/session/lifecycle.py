"""Server-wide session state: whether the server drains, and which sessions are open."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from rillet.server.session.registry import RequestRegistry

log = logging.getLogger(__name__)


class Drainable(Protocol):
    """What the lifecycle needs of a session."""

    @property
    def in_flight(self) -> int: ...

    def wake(self) -> None: ...

    def shutdown(self) -> None: ...

    def sweep(self, now: float) -> None: ...


class Lifecycle:
    """Server-wide state that sessions consult: whether the server drains, which sessions are open.

    And the requests in flight by tenant (`requests`, a RequestRegistry, for ControlService.Abort).
    """

    def __init__(self, on_engine_dead: Callable[[], None] = lambda: None) -> None:
        self.draining = False
        self.on_engine_dead = on_engine_dead
        self.requests = RequestRegistry()
        self._sessions: set[Drainable] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def in_flight(self) -> int:
        """Requests in flight across all sessions."""
        return sum(s.in_flight for s in self._sessions)

    def begin_drain(self) -> None:
        """Refuse new sessions and requests; idle sessions end now, busy ones when their requests finish."""
        self.draining = True
        for session in list(self._sessions):
            session.wake()

    async def wait_drained(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for every session to end; True when they all did."""
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cancel_all(self) -> None:
        """Fail every request still in flight with UNAVAILABLE (the grace period is over)."""
        for session in list(self._sessions):
            session.shutdown()

    async def watch(self, period_s: float) -> None:
        """Sweep every open session's watchdog each `period_s`, until cancelled: one task for the whole server."""
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            for session in list(self._sessions):
                try:
                    session.sweep(now)
                except Exception:  # one session's bug must not end every session's watchdog
                    log.exception("the watchdog sweep of a session failed; the others go on")

    def register(self, session: Drainable) -> None:
        self._sessions.add(session)
        self._idle.clear()

    def unregister(self, session: Drainable) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._idle.set()
