"""Mirror of `tensorrt_llm/executor/result.py` (1.2.1): CompletionOutput, GenerationResult and how responses fold in.

The folding logic follows the real `_handle_sequence`/`_handle_response` step for step, quirks included:
- `token_ids` and `text` are cumulative; `token_ids_diff`/`text_diff`/`logprobs_diff` are slices from lengths
  remembered when *that output* last received a response, so with n > 1 an output not in the latest response
  reports its previous diff again (the diff is stale, not empty);
- a STOP_WORDS finish truncates `token_ids` by the stop word's length (unless include_stop_str_in_output), so the
  cumulative list can shrink at the final step, while the text decoded from earlier steps keeps a multi-token stop
  word's prefix;
- a stop string found in the detokenized text truncates `text`, sets finish_reason 'stop' and `_done`, without
  aborting the request in the executor;
- iterating (`async for`) yields the same object after each response; it stops only once `_done`;
- a postprocess worker's output replaces `outputs[0]` whole and is not detokenized again (`cached_tokens` is only
  read from the executor's own responses, so it stays 0 then); `request_perf_metrics` is copied from each response.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from queue import Queue
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from tensorrt_llm.bindings.executor import FinishReason
from tensorrt_llm.executor.postproc_worker import PostprocWorker
from tensorrt_llm.executor.utils import RequestError, has_event_loop
from tensorrt_llm.llmapi.utils import AsyncQueue
from tensorrt_llm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tensorrt_llm._double.executor import Response
    from tensorrt_llm.executor.executor import GenerationExecutor
    from tensorrt_llm.executor.request import GenerationRequest

__all__ = [
    "CompletionOutput",
    "DetokenizedGenerationResultBase",
    "GenerationResult",
    "GenerationResultBase",
    "IterationResult",
    "Logprob",
    "TokenLogprobs",
]


def _queues() -> tuple[AsyncQueue | None, Any]:
    """(aqueue, queue) as both result kinds make them: an AsyncQueue and its sync side when an event loop runs."""
    if has_event_loop():
        aqueue = AsyncQueue()
        return aqueue, aqueue.sync_q
    return None, Queue()


@dataclass(slots=True)
class Logprob:
    """Holds logprob and vocab rank for a token."""

    logprob: float
    rank: int | None = None


TokenLogprobs: TypeAlias = list[dict[int, Logprob]]


@dataclass(slots=True)
class CompletionOutput:
    """The output data of one completion output of a request (fields and defaults as in 1.2.1)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: TokenLogprobs | list[float] = field(default_factory=list)
    prompt_logprobs: TokenLogprobs = field(default_factory=list)
    finish_reason: Literal["stop", "length", "timeout", "cancelled", "not_finished"] | None = None
    stop_reason: int | str | None = None
    generation_logits: Any = None
    additional_context_outputs: dict[str, Any] | None = None
    additional_generation_outputs: dict[str, Any] | None = None
    disaggregated_params: Any = None
    request_perf_metrics: Any = None

    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)
    _last_logprobs_len: int = field(default=0, init=False, repr=False)
    _incremental_states: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _postprocess_result: Any = None

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]

    @property
    def logprobs_diff(self) -> TokenLogprobs | list[float]:
        return self.logprobs[self._last_logprobs_len :]


class GenerationResultBase:
    """The core of GenerationResult: outputs, and folding executor responses into them."""

    def __init__(
        self,
        id: int,
        sampling_params: SamplingParams,
        background_error_handler: Callable[..., None] | None = None,
        postproc_params: Any = None,
    ) -> None:
        self.id = id
        self.sampling_params = sampling_params
        self.postproc_params = postproc_params
        self.disaggregated_params: Any = None
        self.decoding_iter = 0
        self.cached_tokens = 0
        self.avg_decoded_tokens_per_iter: float | None = None
        self._done = False
        self.metrics_dict: dict[str, float] = {}
        self.trace_headers: dict[str, str] | None = None
        self.use_trtllm_sampler = sampling_params.use_beam_search and (sampling_params.best_of or 1) > 1
        self.aqueue, self.queue = _queues()
        self._outputs: list[CompletionOutput] = [CompletionOutput(i) for i in range(sampling_params.best_of or 1)]
        self._background_error_handler: weakref.WeakMethod[Callable[..., None]] | None = None
        if background_error_handler is not None:
            self._background_error_handler = weakref.WeakMethod(background_error_handler)

    @property
    def outputs(self) -> list[CompletionOutput]:
        params = self.sampling_params
        if params.use_beam_search or params.n == params.best_of:
            return self._outputs[: params.n]
        ranked = sorted(
            self._outputs,
            key=lambda x: x.cumulative_logprob if x.cumulative_logprob is not None else float("-inf"),
            reverse=True,
        )
        for i, output in enumerate(ranked):
            output.index = i
        return ranked[: params.n]

    def _handle_sequence(self, finish_reasons: list[FinishReason], response_tensors: Any, sequence_index: int) -> None:
        src_idx = sequence_index if self.sampling_params.use_beam_search else 0
        output = self._outputs[sequence_index]
        output._last_token_ids_len = len(output.token_ids)
        output.token_ids.extend(response_tensors.output_token_ids[src_idx])
        if response_tensors.cum_log_probs is not None:
            output.cumulative_logprob = response_tensors.cum_log_probs[src_idx]
        if response_tensors.log_probs is not None:
            output._last_logprobs_len = len(output.logprobs)
            output.logprobs += response_tensors.log_probs[src_idx]
        if response_tensors.request_perf_metrics is not None:
            output.request_perf_metrics = response_tensors.request_perf_metrics
        if finish_reasons and finish_reasons[src_idx] == FinishReason.CANCELLED:
            output.finish_reason = "cancelled"
        sequence_is_finished = (
            finish_reasons
            and finish_reasons[src_idx] != FinishReason.NOT_FINISHED
            and finish_reasons[src_idx] != FinishReason.CANCELLED
        ) or self._done
        if sequence_is_finished:
            reason = finish_reasons[src_idx]
            if reason == FinishReason.END_ID:
                output.finish_reason = "stop"
            elif reason == FinishReason.STOP_WORDS:
                output.finish_reason = "stop"
                for stop_reason, stop_ids in self.sampling_params._get_stop_reasons_and_words():
                    if output.token_ids[-len(stop_ids) :] == stop_ids:
                        output.stop_reason = stop_reason
                        if not self.sampling_params.include_stop_str_in_output:
                            output.token_ids = output.token_ids[: -len(stop_ids)]
                        break
            elif reason == FinishReason.LENGTH:
                output.finish_reason = "length"
            elif reason == FinishReason.TIMED_OUT:
                output.finish_reason = "timeout"
            elif reason == FinishReason.CANCELLED:
                pass
            else:
                raise ValueError(f"Unknown finish reason: {reason}")

    def _handle_response(self, response: Response | PostprocWorker.Output) -> None:
        if isinstance(response, PostprocWorker.Output):
            self._done = response.is_final
            if isinstance(response.res, CompletionOutput):  # in streaming mode
                self._outputs[0] = response.res
            else:
                self._outputs[0]._postprocess_result = response.res
            if response.error:
                handler = self._background_error_handler() if self._background_error_handler is not None else None
                if handler is not None:
                    handler(response.error)
            return
        if response.has_error():
            handler = self._background_error_handler() if self._background_error_handler is not None else None
            if handler is not None:
                handler(response.error_msg)
        result = response.result
        assert result is not None
        self._done = result.is_final
        self.decoding_iter = result.decoding_iter
        self.cached_tokens = result.cached_tokens
        self.avg_decoded_tokens_per_iter = result.avg_decoded_tokens_per_iter
        self._handle_sequence(result.finish_reasons, result, result.sequence_index)
        handler = self._background_error_handler() if self._background_error_handler is not None else None
        if handler is not None:
            handler()


class DetokenizedGenerationResultBase(GenerationResultBase):
    """Adds incremental detokenization (`tokenizer.decode_incrementally`) and the text-level stop-string check."""

    def __init__(
        self,
        id: int,
        sampling_params: SamplingParams,
        tokenizer: Any = None,
        streaming: bool = False,
        background_error_handler: Callable[..., None] | None = None,
        postproc_params: Any = None,
    ) -> None:
        super().__init__(id, sampling_params, background_error_handler, postproc_params)
        self.tokenizer = tokenizer
        self._streaming = streaming

    def _handle_response(self, response: Response | PostprocWorker.Output) -> None:
        GenerationResultBase._handle_response(self, response)
        if isinstance(response, PostprocWorker.Output):
            return  # the postprocess has been performed, return directly
        kwargs = {
            "skip_special_tokens": self.sampling_params.skip_special_tokens,
            "spaces_between_special_tokens": self.sampling_params.spaces_between_special_tokens,
        }
        if not (self.sampling_params.detokenize and self.tokenizer is not None):
            return
        for beam_output in self.outputs:
            beam_output._last_text_len = len(beam_output.text)
            if self._streaming and not self.sampling_params.use_beam_search:
                beam_output.text, beam_output._incremental_states = self.tokenizer.decode_incrementally(
                    beam_output.token_ids_diff,
                    prev_text=beam_output.text,
                    states=beam_output._incremental_states,
                    flush=self._done,
                    stream_interval=self.sampling_params._stream_interval,
                    **kwargs,
                )
            else:
                beam_output.text = self.tokenizer.decode(beam_output.token_ids, **kwargs)
            is_generating = not self._done
            stopped_or_length = beam_output.finish_reason in ("stop", "length")
            if is_generating or stopped_or_length:
                for stop_reason, _ in self.sampling_params._get_stop_reasons_and_words():
                    if isinstance(stop_reason, str) and stop_reason in beam_output.text:
                        stop_pos = beam_output.text.find(stop_reason)
                        if not self.sampling_params.include_stop_str_in_output:
                            beam_output.text = beam_output.text[:stop_pos]
                        else:
                            beam_output.text = beam_output.text[: stop_pos + len(stop_reason)]
                        beam_output.finish_reason = "stop"
                        beam_output.stop_reason = stop_reason
                        self._done = True
                        break


class GenerationResult(GenerationResultBase):
    """The result of a generation request: await it, iterate it (`async for` once per response), or abort it."""

    def __init__(
        self,
        generation_request: GenerationRequest,
        background_error_handler: Callable[..., None] | None = None,
        executor: GenerationExecutor | None = None,
        disaggregated_params: Any = None,
        logprob_params: Any = None,
    ) -> None:
        assert generation_request.id is not None, "the executor sets the id before it builds the result"
        super().__init__(
            generation_request.id,
            generation_request.sampling_params,
            background_error_handler,
            postproc_params=generation_request.postproc_params,
        )
        self._generation_request = generation_request
        self._streaming = generation_request.streaming
        self.disaggregated_params = disaggregated_params
        self._logprob_params = logprob_params
        headers = generation_request.trace_headers
        self.trace_headers = dict(headers) if headers is not None else None
        self._executor: weakref.ReferenceType[GenerationExecutor] | None = weakref.ref(executor) if executor else None
        self._aborted = False

    @property
    def request_id(self) -> int:
        assert self._generation_request.id is not None
        return self._generation_request.id

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._generation_request.prompt_token_ids

    def abort(self) -> None:
        """Abort the generation request."""
        assert self._executor is not None, "The executor is not set for this result."
        executor = self._executor()
        assert executor is not None
        executor.abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        """Return whether the generation request is aborted."""
        return self._aborted

    @property
    def finished(self) -> bool:
        return self._done

    def _result_step(self, timeout: float | None = None) -> None:
        response = self.queue.get(timeout=timeout)
        self._handle_response(response)

    async def _aresult_step(self) -> None:
        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, so async operations are not available."
        )
        response = await self.aqueue.get()
        self._handle_response(response)

    def result(self, timeout: float | None = None) -> GenerationResult:
        while not self._done:
            self._result_step(timeout)
        return self

    async def aresult(self) -> GenerationResult:
        while not self._done:
            await self._aresult_step()
        return self

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return self.aresult().__await__()

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        await self._aresult_step()
        return self

    def __hash__(self) -> int:
        return hash(self.request_id)


class IterationResult:
    """Runtime results for all available iterations: what `LLM.get_stats_async` returns (1.2.1 page, verbatim logic).

    One per executor, made by its first `generate_async` (an AsyncQueue when an event loop runs there); the proxy's
    stats thread puts each iteration's stats into `queue` as a JSON string. `async for` yields them parsed, waiting
    up to the timeout (`set_timeout`, 2 s by default) for each; the first wait that times out marks the result done
    and ends the iteration, and a done result ends at once until `mark_undone`, which every `generate_async` calls.
    """

    def __init__(self) -> None:
        self._done = False
        self._timeout: float | None = 2
        self.aqueue, self.queue = _queues()

    def set_timeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def mark_undone(self) -> None:
        # should be called when new prompts are submitted
        self._done = False

    def __aiter__(self) -> IterationResult:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, so async operations are not available."
        )
        try:
            data = await self.aqueue.get(timeout=self._timeout)
            return json.loads(data)
        except TimeoutError:
            self._done = True
            raise StopAsyncIteration from None


# Re-exported for the executor's error handler, as the real module imports it from .utils.
__all__ += ["RequestError"]
