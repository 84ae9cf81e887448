"""The trtllm engine with KV cache reporting, read from TensorRT-LLM's iteration stats off the request path."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from rillet.server.engine.trtllm.api import kv_cache_usage
from rillet.server.engine.trtllm.engine import TrtllmEngine

if TYPE_CHECKING:
    from tensorrt_llm import LLM

__all__ = ["STATS_WAIT_SECONDS", "KvReportingTrtllmEngine"]

log = logging.getLogger(__name__)

STATS_WAIT_SECONDS = 2.0
"""How long the KV reader waits for the next iteration's stats (TensorRT-LLM's own default): none for that long, and
the executor ran no iteration."""


class KvReportingTrtllmEngine(TrtllmEngine):
    """The trtllm engine with base.KvCacheReporting: its KV cache use, read from TensorRT-LLM's iteration stats.

    With `enable_iter_perf_stats` the executor records statistics for every iteration it runs, and its proxy hands
    them over about every 0.2 s (`LLM.get_stats_async`; FACTS.md "Iteration stats"). One task on the event loop reads
    them as they come, awaiting TensorRT-LLM's own queue, so it never blocks the loop and adds nothing to a request's
    path, and keeps `kvCacheStats.usedNumBlocks / maxNumBlocks` of the latest (`api.kv_cache_usage`), which
    `kv_cache_utilization` returns. The reading is also what keeps that queue short: nothing else empties it.
    No stats for STATS_WAIT_SECONDS means the executor ran no iteration; with nothing of Rillet's in flight it then
    holds no request's blocks, so the use is 0 whatever the last stats said (blocks kept for prefix reuse are on the
    block manager's free list; FACTS.md lists what a GPU run has still to confirm).
    """

    _kv_cache = 0.0
    _stats_reader: asyncio.Task[None] | None = None

    def kv_cache_utilization(self) -> float:
        """base.KvCacheReporting: the share of KV cache blocks in use at the latest iteration TensorRT-LLM reported."""
        return self._kv_cache

    async def start(self) -> None:
        """TrtllmEngine.start, then the stats reader (the warm-up's submission made TensorRT-LLM's stats queue)."""
        await super().start()
        assert self._llm is not None  # SERVING
        self._stats_reader = asyncio.get_running_loop().create_task(self._read_stats(self._llm), name="trtllm-stats")

    async def aclose(self) -> None:
        if self._stats_reader is not None:
            self._stats_reader.cancel()
        await super().aclose()

    async def _read_stats(self, llm: LLM) -> None:
        """Keep `_kv_cache` current from the iteration stats, until the executor dies or the engine closes."""
        loop = asyncio.get_running_loop()
        failed = False
        while self._death is None:
            began = loop.time()
            try:
                stats = llm.get_stats_async(STATS_WAIT_SECONDS)
                if isinstance(stats, self._api.iteration_result):  # else no submission yet: no stats queue either
                    stats.mark_undone()  # it ends at its first quiet spell and stays ended until the next submission
                    async for iteration in stats:  # ends once no stats came for STATS_WAIT_SECONDS
                        usage = kv_cache_usage(iteration)
                        if usage is not None:
                            self._kv_cache = usage
                    if not self._in_flight:
                        self._kv_cache = 0.0
                failed = False
            except Exception:  # a reader that failed must not end the engine; the use it reports is then stale
                if not failed:
                    log.exception("trtllm: reading TensorRT-LLM's iteration stats failed; retrying")
                failed = True
            await asyncio.sleep(max(0.0, began + STATS_WAIT_SECONDS - loop.time()))  # a short pass must not spin
