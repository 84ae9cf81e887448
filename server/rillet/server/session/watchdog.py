"""The per-request watchdog: a client that stopped reading, or a streaming input that stopped coming."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from rillet.server.session.request import CancelReason, Request, State

log = logging.getLogger(__name__)


def sweep_period(stall_s: float, idle_input_s: float) -> float | None:
    """How often the watchdogs must be swept for these limits; None when both clocks are off."""
    limits = [limit for limit in (stall_s, idle_input_s) if limit]
    return min(1.0, min(limits) / 4) if limits else None


class Watchdog:
    """Cancels each request whose client stopped reading or whose streaming input went idle, for the whole session.

    Two clocks, both per request and both measured where their state lives:
    - stall: how long an output has waited while the client took nothing of the request
      (Outbox.waiting_for_client). Only pull time counts, so a slow engine is never mistaken for a stalled client,
      and any output taken restarts it, so a client that reads at its own pace (a listener playing audio at real
      time, however long) is never mistaken for one that stopped; a writer blocked on another request's output, or
      on a `rejected`, stalls every request waiting behind it.
    - idle input: how long the engine has waited for streaming text that did not come (TextInput.idle_since).
    A limit of 0 turns a clock off. One server-wide task (Lifecycle.watch) sweeps every session every
    `sweep_period` (a quarter of the shorter limit, at most a second), so a request is cancelled between its limit
    and 1.5 times it (progress is seen at a sweep), and a session costs no task or timer of its own.
    """

    def __init__(self, stall_s: float, idle_input_s: float, requests: Callable[[], Iterable[Request]]) -> None:
        self._stall_s = stall_s
        self._idle_input_s = idle_input_s
        self._requests = requests

    def sweep(self, now: float) -> None:
        """Cancel every request past a limit at `now` (monotonic seconds)."""
        for request in list(self._requests()):
            if request.state is State.ENDED:
                continue
            waiting = request.outbox.waiting_for_client(now)
            if self._stall_s and waiting is not None and now - waiting > self._stall_s:
                log.warning("request %s: client read nothing for %.1fs, cancelling", request.request_id, now - waiting)
                request.cancel(CancelReason.STALLED)
                continue
            idle = request.input.idle_since if request.input is not None else None
            if self._idle_input_s and idle is not None and request.source is None and now - idle > self._idle_input_s:
                log.info("request %s: no input text for %.1fs, cancelling", request.request_id, now - idle)
                request.cancel(CancelReason.INPUT_IDLE)
