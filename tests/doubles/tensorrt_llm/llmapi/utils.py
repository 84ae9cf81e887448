"""Mirror of `tensorrt_llm/llmapi/utils.py` (1.2.1): `get_device_count` and the `AsyncQueue` results arrive through."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any

from tensorrt_llm._double import SIMULATION


def get_device_count() -> int:
    """The real one: `torch.cuda.device_count() if torch.cuda.is_available() else 0`; here the simulated GPUs."""
    return SIMULATION.device_count


class AsyncQueue:
    """A deque plus an asyncio.Event: the executor's threads append, the event loop is notified, `get` awaits.

    As in the real class, appending is thread-safe (a deque) and only the notification runs on the loop.
    """

    def __init__(self) -> None:
        self._q: collections.deque[Any] = collections.deque()
        self._event = asyncio.Event()
        self._sync_q = _SyncQueue(self, asyncio.get_running_loop())

    @property
    def sync_q(self) -> _SyncQueue:
        return self._sync_q

    def full(self) -> bool:
        """Never: the deque has no maxlen (so a stats queue nobody reads grows without bound, as the real one does)."""
        return len(self._q) == self._q.maxlen

    def empty(self) -> bool:
        return not self._q

    def put_nowait(self, item: Any) -> None:
        self._q.append(item)

    def notify(self) -> None:
        if self._q:
            self._event.set()

    async def get(self, timeout: float | None = None) -> Any:
        """The next item: waiting for ever (None), at most `timeout` seconds (asyncio.TimeoutError), or not at all
        (`timeout` <= 0: asyncio.QueueEmpty when there is none), as the real `get` does."""
        if timeout is None:
            while not self._q:
                await self._event.wait()
        elif timeout > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not self._q:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError()
                await asyncio.wait_for(self._event.wait(), timeout=remaining)
        elif not self._q:
            raise asyncio.QueueEmpty()
        item = self._q.popleft()
        if not self._q:
            self._event.clear()
        return item


class _SyncQueue:
    """The producer side, used from the executor's threads (mirrors `_SyncQueue`: `put_nowait` + `notify_many`)."""

    def __init__(self, queue: AsyncQueue, loop: asyncio.AbstractEventLoop) -> None:
        self._aq = queue
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def put_nowait(self, item: Any) -> None:
        self._aq.put_nowait(item)

    @staticmethod
    def notify_many(loop: asyncio.AbstractEventLoop, queues: Iterable[_SyncQueue]) -> None:
        """Wake the consumers of many queues with one callback on their loop (one per executor step)."""
        targets = tuple(queues)
        if loop.is_closed():
            return
        loop.call_soon_threadsafe(_notify_all, targets)


def _notify_all(queues: tuple[_SyncQueue, ...]) -> None:
    for queue in queues:
        queue._aq.notify()
