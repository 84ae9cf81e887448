"""Mirror of `tensorrt_llm/executor/executor.py` (1.2.1): `GenerationExecutor`, the base of the proxy.

What follows the real code: `generate_async` builds a `GenerationRequest` and `submit`s it; the background error
handling (`_handle_background_error`): a `str` is a per-request error, raised as RequestError; an Exception is a
serious error from a background thread or process: the executor shuts down and raises it; without an argument it
raises the first error waiting in `_error_queue` (a worker process's death, queued by `mpi_done_callback`), shutting
down first. `is_shutdown()` is `doing_shutdown`, which only shutdown sets: a worker that died is not "shut down" until
something calls `_handle_background_error()` (in 1.2.1: the next `submit`, or the fold of a response).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from queue import Queue
from typing import TYPE_CHECKING, Any

from tensorrt_llm.executor.request import GenerationRequest
from tensorrt_llm.executor.utils import RequestError
from tensorrt_llm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tensorrt_llm.executor.result import GenerationResult


def get_cache_salt_id(cache_salt: str) -> int:
    """`tensorrt_llm.inputs.utils.get_cache_salt_id`: a 64-bit id from the salt (the KV blocks' hash input)."""
    return int.from_bytes(hashlib.sha256(cache_salt.encode("utf-8")).digest()[:8], "little")


class GenerationExecutor(ABC):
    """The executor behind an LLM: requests in, GenerationResults out."""

    def __init__(self) -> None:
        self._error_queue: Queue[BaseException] = Queue()
        self.doing_shutdown = False
        self._last_client_id: int = 1 << 30

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
