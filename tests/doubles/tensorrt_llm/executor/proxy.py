"""Mirror of `tensorrt_llm/executor/proxy.py` (1.2.1): `GenerationExecutorProxy`, the executor in the LLM's process.

What follows the real code: the worker runs out of process (an MPI worker; here `_double.executor.SimulatedExecutor`,
a thread standing in for it); `submit` first raises any queued background error (`_start_dispatch_threads` calls
`_handle_background_error()`), registers the result, puts the request on the worker's queue and handles background
errors again; `abort_request` only sends a CancellingRequest ("it may take a while for the request to be cancelled
in the worker and send back a finished result"); a dispatch step delivers the worker's responses to each result's
queue, forgets finished results, and wakes their event loop once per batch; the worker's death reaches the proxy only
through the done callback, which queues its exception in `_error_queue` and nothing else: results in flight get no
further response, and `is_shutdown()` stays False until something handles the error. `pre_shutdown` aborts every
result it still holds and tells the worker to quit; `shutdown` waits for it.
Iteration stats: once the LLM's `IterationResult` exists, `submit` starts the stats dispatch thread, which every
0.2 s ("get-stats is not urgent") takes the worker's stats, each one iteration's JSON, and puts them on that result's
queue with one notification of its loop (`dispatch_stats_task` / `_iteration_result_task`); `shutdown` stops it.
Unlike the real thread it waits on an event instead of `time.sleep`, so shutting down need not wait out the 0.2 s.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tensorrt_llm._double.executor import SimulatedExecutor
from tensorrt_llm.executor.executor import GenerationExecutor
from tensorrt_llm.executor.postproc_worker import PostprocWorker
from tensorrt_llm.executor.request import GenerationRequest
from tensorrt_llm.executor.result import GenerationResult
from tensorrt_llm.llmapi.utils import _SyncQueue

STATS_DISPATCH_SECONDS = 0.2
"""The real `_iteration_result_task` sleeps this long before each take from the worker's stats queue."""

if TYPE_CHECKING:
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

__all__ = ["GenerationExecutorProxy"]


class GenerationExecutorProxy(GenerationExecutor):
    def __init__(self, args: TorchLlmArgs, end_id: int, vocab_size: int, tokenizer: Any) -> None:
        super().__init__(is_llm_executor=True)
        self.workers_started = False
        self.dispatch_stats_thread: threading.Thread | None = None
        self._stop_stats = threading.Event()
        self._results: dict[int, GenerationResult] = {}
        self.worker = SimulatedExecutor(args, end_id, vocab_size, tokenizer, self.dispatch_result_task, self._done)
        """NOT a real attribute: the simulated worker process (tests read its counters)."""
        self.workers_started = True

    def _done(self, error: BaseException | None) -> None:
        """`mpi_done_callback`: the worker ended; an exception waits in the error queue for the main thread."""
        if error is not None:
            self._error_queue.put_nowait(error)

    def abort_request(self, request_id: int) -> None:
        """Abort a request by sending a cancelling request to the request queue."""
        self.worker.abort_request(request_id)

    def dispatch_result_task(self, responses: Iterable[Any]) -> None:
        """What the dispatch thread does with one batch from the worker's result queue."""
        queues: dict[int, _SyncQueue] = {}
        loop = None
        for response in responses:
            if isinstance(response, PostprocWorker.Output):
                client_id, final = response.client_id, response.is_final
            else:  # a Response: an error response ends the request too
                client_id, final = response.request_id, response.result is None or response.result.is_final
            result = self._results.get(client_id)
            if result is None:
                continue
            result.queue.put_nowait(response)
            queues[id(result.queue)] = result.queue
            loop = loop or result.queue.loop
            if final:
                self._results.pop(client_id, None)
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the caller's event loop is gone (its test or server ended)
                _SyncQueue.notify_many(loop, queues.values())

    def dispatch_stats_task(self) -> bool:
        """One pass of the stats dispatch thread: the worker's latest iteration stats onto the LLM's result queue."""
        if self._stop_stats.wait(STATS_DISPATCH_SECONDS):
            return False
        result = self._iter_stats_result
        stats = self.worker.fetch_stats()
        if result is None or not stats:
            return True
        queue = result.queue
        for stat in stats:
            queue.put_nowait(stat)
        if isinstance(queue, _SyncQueue):
            _SyncQueue.notify_many(queue.loop, [queue])
        return True

    def _start_dispatch_threads(self) -> None:
        """Only collect stats when submission is via LLM API (the real one starts its result thread here too)."""
        if self.dispatch_stats_thread is None and self._iter_stats_result is not None:
            self.dispatch_stats_thread = threading.Thread(
                target=self._dispatch_stats, name="proxy_dispatch_stats_thread", daemon=True
            )
            self.dispatch_stats_thread.start()

    def _dispatch_stats(self) -> None:
        while self.dispatch_stats_task():
            pass

    def _abort_all_requests(self) -> None:
        for result in list(self._results.values()):  # results can finish during this loop
            result.abort()

    def pre_shutdown(self) -> None:
        if not self.workers_started or self.doing_shutdown:
            return
        self.doing_shutdown = True
        self._abort_all_requests()
        self.worker.stop()  # request_queue.put(None): notify the workers to quit

    def shutdown(self) -> None:
        if not self.workers_started:
            return
        if not self.doing_shutdown:
            self.pre_shutdown()
        self.worker.join()
        self._stop_stats.set()  # step2: notify the background threads to quit
        if self.dispatch_stats_thread is not None and self.dispatch_stats_thread is not threading.current_thread():
            self.dispatch_stats_thread.join()
        self.workers_started = False
        self._handle_background_error()  # errors during shutting down

    def submit(self, request: GenerationRequest) -> GenerationResult:
        """Forward the request to the worker; return a "future" GenerationResult."""
        self._start_dispatch_threads()
        self._handle_background_error()  # _start_dispatch_threads
        request.set_id(self._get_next_client_id())
        result = GenerationResult(request, background_error_handler=self._handle_background_error, executor=self)
        assert request.id is not None
        self._results[request.id] = result
        self.worker.submit(request)  # request_queue.put(request)
        self._handle_background_error()
        return result
