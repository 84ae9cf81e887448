"""Mirror of `tensorrt_llm/executor/executor.py` (1.2.1): `GenerationExecutor`, the base of the proxy.

What follows the real code: `generate_async` builds a `GenerationRequest` and `submit`s it; the background error
handling (`_handle_background_error`): a `str` is a per-request error, raised as RequestError; an Exception is a
serious error from a background thread or process: the executor shuts down and raises it; without an argument it
raises the first error waiting in `_error_queue` (a worker process's death, queued by `mpi_done_callback`), shutting
down first. `is_shutdown()` is `doing_shutdown`, which only shutdown sets: a worker that died is not "shut down" until
something calls `_handle_background_error()` (in 1.2.1: the next `submit`, or the fold of a response).
The iteration stats (`aget_stats`, behind `LLM.get_stats_async`): the executor of an LLM makes one `IterationResult`
at its first `generate_async` and marks it undone at every later one (`_maybe_initialize_iteration_results`); before
the first, `aget_stats` prints a warning and returns an empty async iterable.
"""

from __future__ import annotations

import hashlib
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from queue import Queue
from typing import TYPE_CHECKING, Any

from tensorrt_llm.executor.request import GenerationRequest
from tensorrt_llm.executor.result import IterationResult
from tensorrt_llm.executor.utils import RequestError
from tensorrt_llm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tensorrt_llm.executor.result import GenerationResult


def get_cache_salt_id(cache_salt: str) -> int:
    """`tensorrt_llm.inputs.utils.get_cache_salt_id`: a 64-bit id from the salt (the KV blocks' hash input)."""
    return int.from_bytes(hashlib.sha256(cache_salt.encode("utf-8")).digest()[:8], "little")


async def empty_async_iterable() -> AsyncIterator[Any]:
    if False:  # ensures the function remains an async generator
        yield


class GenerationExecutor(ABC):
    """The executor behind an LLM: requests in, GenerationResults out."""

    def __init__(self, is_llm_executor: bool | None = None) -> None:
        self._error_queue: Queue[BaseException] = Queue()
        self.doing_shutdown = False
        self._last_client_id: int = 1 << 30
        self._is_llm_executor = is_llm_executor  # whether it's the executor instance of LLM API
        self._iter_stats_result: IterationResult | None = None

    @abstractmethod
    def submit(self, request: GenerationRequest) -> GenerationResult: ...

    @abstractmethod
    def abort_request(self, request_id: int) -> None: ...

    def generate_async(
        self,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        streaming: bool = False,
        trace_headers: Mapping[str, str] | None = None,
        postproc_params: Any = None,
        cache_salt_id: int | None = None,
    ) -> GenerationResult:
        """Generate output for the given prompt token ids in the asynchronous mode (a subset of the real keywords)."""
        self._maybe_initialize_iteration_results()
        request = GenerationRequest(
            list(prompt_token_ids),
            sampling_params,
            streaming,
            postproc_params=postproc_params,
            trace_headers=trace_headers,
            cache_salt_id=cache_salt_id,
        )
        return self.submit(request)

    def _get_next_client_id(self) -> int:
        self._last_client_id = (self._last_client_id + 1) & ((1 << 64) - 1)
        return self._last_client_id

    def _maybe_initialize_iteration_results(self) -> None:
        if self._is_llm_executor:
            if self._iter_stats_result is None:
                self._iter_stats_result = IterationResult()  # singleton to store cpp runtime stats
            else:
                self._iter_stats_result.mark_undone()  # expect more engine stats whenever new prompts are submitted

    def aget_stats(self, timeout: float | None) -> IterationResult | AsyncIterator[Any]:
        """Get iteration statistics from the runtime: an async iterable object containing runtime stats."""
        if self._iter_stats_result is None:
            print(
                "Iteration statistics are not available yet. To collect runtime statistics, please call "
                "get_stats_async() in async coroutine or the /metrics endpoint (if you're using trtllm-serve) AFTER "
                "prompts have been submitted.",
                file=sys.stderr,
            )
            return empty_async_iterable()
        self._iter_stats_result.set_timeout(timeout)
        return self._iter_stats_result

    def _handle_background_error(self, error: BaseException | str | None = None) -> None:
        """Process the errors from the threads or processes (called in the main thread)."""
        if error is not None:
            if isinstance(error, RequestError):
                pass  # a per-request error, can be captured and ignored
            elif isinstance(error, str):
                error = RequestError(error)  # a per-request error
            else:
                self.shutdown()  # a serious error from a background thread or process
            raise error
        if not self._error_queue.empty():  # raise the first error in the queue
            queued = self._error_queue.get()
            self._error_queue.task_done()
            self.shutdown()
            raise queued

    def is_shutdown(self) -> bool:
        return self.doing_shutdown

    @abstractmethod
    def shutdown(self) -> None: ...
