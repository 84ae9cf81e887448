"""NOT a mirror: the simulated executor, standing in for TensorRT-LLM's PyExecutor and its worker process.

One thread runs the step loop, as the real executor runs off the caller's event loop. Each step:
1. applies aborts (a final CANCELLED response, the slot and KV freed at once);
2. admits waiting requests in arrival order while fewer than `max_batch_size` run and the KV budget allows it
   (GUARANTEED_NO_EVICT reserves prompt + max_tokens, MAX_UTILIZATION only the prompt);
3. spends at most `max_num_tokens` tokens: one decode token for every generating sequence first, then prompt chunks
   in arrival order (without chunked prefill a prompt must fit the rest of the budget whole); a prompt's last chunk
   yields its first token, as a context step does;
4. sends one response per sequence that produced a token or finished, then wakes the event loops once per step.
Prompt prefixes are remembered block by block, so a repeated prefix is reported as `cached_tokens` and skipped.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tensorrt_llm._double import SIMULATION
from tensorrt_llm._double.tokenizer import EOS, piece_bytes, piece_ids
from tensorrt_llm.bindings.executor import FinishReason
from tensorrt_llm.executor.result import Logprob
from tensorrt_llm.llmapi.llm_args import CapacitySchedulerPolicy, TorchLlmArgs
from tensorrt_llm.llmapi.utils import _SyncQueue
from tensorrt_llm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tensorrt_llm.executor.result import GenerationResult

CORPUS = (
    "The river runs quietly past the old mill, where light falls on wet stone. Café au lait, naïve façades, "
    "Ångström and smörgåsbord; 日本語のテキスト、中文文本 — emoji too: 🌊🐟✨. Numbers: 3.14159, 2.71828. "
)
CORPUS_BYTES = CORPUS.encode("utf-8")
DEFAULT_MAX_BATCH_SIZE = 2048
CATCH_UP_STEPS = 8


@dataclass
class GenerationRequest:
    """Stand-in for `tensorrt_llm.executor.request.GenerationRequest` (the fields GenerationResult reads)."""

    id: int
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    streaming: bool
    postproc_params: Any = None
    trace_headers: dict[str, str] | None = None


@dataclass(slots=True)
class Result:
    """Stand-in for the bindings' `Result` of one response (the fields `_handle_sequence` reads)."""

    is_final: bool
    output_token_ids: list[list[int]]
    finish_reasons: list[FinishReason]
    sequence_index: int = 0
    log_probs: list[Any] | None = None
    cum_log_probs: list[float] | None = None
    decoding_iter: int = 0
    cached_tokens: int = 0
    avg_decoded_tokens_per_iter: float | None = None


@dataclass(slots=True)
class Response:
    """Stand-in for the bindings' `Response`: a result, or an error message for one request."""

    request_id: int
    result: Result | None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


@dataclass(eq=False, slots=True)  # identity: the executor finds sequences in its lists by `in` and `remove`
class _Sequence:
    """One request inside the simulated executor."""

    request: GenerationRequest
    result: GenerationResult
    queue: _SyncQueue
    cached: int = 0
    prefilled: int = 0
    reserved: int = 0
    generated: list[list[int]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    cum_logprob: list[float] = field(default_factory=list)
    iterations: int = 0
    pieces: list[int] = field(default_factory=list)  # the simulated model's text, cut once at submission
    start: int = 0  # where a sampled sequence 0 starts reading `pieces`
    stop_words: list[list[int]] = field(default_factory=list)  # non-empty stop word ids, read once

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def in_context(self) -> bool:
        return self.cached + self.prefilled < len(self.prompt)


class SimulatedExecutor:
    """Runs requests in flight, batched per step, on one background thread; see the module docstring."""

    instances: ClassVar[list[SimulatedExecutor]] = []
    """Every executor created in this process (kept: benchmarks read their counters at exit)."""

    def __init__(self, args: TorchLlmArgs, end_id: int) -> None:
        self._args = args
        self._end_id = end_id
        self.max_batch_size = args.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        self.max_num_tokens = args.max_num_tokens or 8192
        self._lock = threading.Condition()
        self._incoming: collections.deque[_Sequence] = collections.deque()
        self._aborts: set[int] = set()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._kv_used = 0
        self._prefixes: set[bytes] = set()
        self._next_id = 1
        self._shutdown = False
        self.steps = 0
        self.largest_batch = 0
        self.cpu_seconds = 0.0  # CPU the step loop itself used (thread time): benchmarks subtract it
        self.tokens_produced = 0  # tokens handed to results (end tokens excluded)
        SimulatedExecutor.instances.append(self)
        self._thread = threading.Thread(target=self._run, name="trtllm-double-executor", daemon=True)
        self._thread.start()

    # -- the API GenerationResult and BaseLLM use ----------------------------------------------------------------

    def new_request_id(self) -> int:
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            return request_id

    def submit(self, request: GenerationRequest, result: GenerationResult) -> None:
        assert result.aqueue is not None, "the double serves async callers only"
        seq = _Sequence(request, result, result.aqueue.sync_q)
        n = request.sampling_params.best_of or 1
        seq.generated = [[] for _ in range(n)]
        seq.finished = [False] * n
        seq.cum_logprob = [0.0] * n
        seq.pieces, seq.start = _model_text(request.prompt_token_ids, request.sampling_params)
        seq.stop_words = [w for w in request.sampling_params._get_stop_words() if w]
        with self._lock:
            self._incoming.append(seq)
            self._lock.notify()

    def abort_request(self, request_id: int) -> None:
        with self._lock:
            self._aborts.add(request_id)
            self._lock.notify()

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            self._lock.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def is_shutdown(self) -> bool:
        return self._shutdown

    @property
    def in_flight(self) -> int:
        """Requests holding a slot or waiting for one (what an abort must bring down)."""
        with self._lock:
            return len(self._running) + len(self._waiting) + len(self._incoming)

    # -- the step loop -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_step = time.monotonic()
        while True:
            with self._lock:
                while not self._shutdown and not (self._incoming or self._waiting or self._running or self._aborts):
                    self._lock.wait()
                if self._shutdown:
                    break
                self._waiting.extend(self._incoming)
                self._incoming.clear()
                aborts, self._aborts = self._aborts, set()
            started = time.thread_time()
            out: list[tuple[_Sequence, Response]] = []
            self._apply_aborts(aborts, out)
            self._admit()
            self._step(out)
            self._deliver(out)
            self.cpu_seconds += time.thread_time() - started
            # Steps keep their schedule, as a GPU's do whatever its caller's process is busy with: a step that
            # started late (this thread waited for the GIL) is made up by the next ones starting at once, up to
            # CATCH_UP_STEPS behind; further behind (the process was stopped), the schedule restarts from now.
            next_step += SIMULATION.step_seconds
            delay = next_step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -CATCH_UP_STEPS * SIMULATION.step_seconds:
                next_step = time.monotonic()

    def _apply_aborts(self, aborts: set[int], out: list[tuple[_Sequence, Response]]) -> None:
        if not aborts:
            return
        for seq in [s for s in (*self._waiting, *self._running) if s.request.id in aborts]:
            self._release(seq)
            n = len(seq.generated)
            result = Result(True, [[] for _ in range(n)], [FinishReason.CANCELLED] * n, cached_tokens=seq.cached)
            out.append((seq, Response(seq.request.id, result)))

    def _admit(self) -> None:
        policy = self._args.scheduler_config.capacity_scheduler_policy
        while self._waiting and len(self._running) < self.max_batch_size:
            seq = self._waiting[0]
            need = len(seq.prompt)
            if policy is CapacitySchedulerPolicy.GUARANTEED_NO_EVICT:
                need += seq.request.sampling_params.max_tokens
            if self._kv_used + need > SIMULATION.kv_cache_tokens and self._running:
                return
            self._waiting.popleft()
            seq.reserved = need
            self._kv_used += need
            seq.cached = self._cached_prefix(seq.prompt) if self._args.kv_cache_config.enable_block_reuse else 0
            self._running.append(seq)

    def _cached_prefix(self, prompt: list[int]) -> int:
        block = SIMULATION.block_size
        cached = 0
        for end in range(block, len(prompt), block):  # the last token is always computed
            if _key(prompt[:end]) not in self._prefixes:
                break
            cached = end
        return cached

    def _step(self, out: list[tuple[_Sequence, Response]]) -> None:
        budget = self.max_num_tokens
        produced: list[tuple[_Sequence, int]] = []
        for seq in self._running:
            if not seq.in_context:
                for index, done in enumerate(seq.finished):
                    if not done and budget > 0:
                        budget -= 1
                        produced.append((seq, index))
        for seq in self._running:
            if not seq.in_context or budget <= 0:
                continue
            remaining = len(seq.prompt) - seq.cached - seq.prefilled
            if remaining > budget and not self._args.enable_chunked_prefill:
                continue
            chunk = min(remaining, budget)
            budget -= chunk
            seq.prefilled += chunk
            if not seq.in_context:
                produced.extend((seq, index) for index in range(len(seq.generated)))
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len({id(s) for s, _ in produced}))
        for seq, index in produced:
            out.append((seq, self._generate(seq, index)))
        for seq in [s for s in self._running if all(s.finished)]:
            self._release(seq)
            if self._args.kv_cache_config.enable_block_reuse:
                block = SIMULATION.block_size
                self._prefixes.update(_key(seq.prompt[:end]) for end in range(block, len(seq.prompt) + 1, block))

    def _generate(self, seq: _Sequence, index: int) -> Response:
        params = seq.request.sampling_params
        generated = seq.generated[index]
        seq.iterations += 1
        position = len(generated)
        if SIMULATION.request_error_after is not None and position >= SIMULATION.request_error_after:
            seq.finished = [True] * len(seq.finished)
            return Response(seq.request.id, None, f"simulated executor error in request {seq.request.id}")
        if SIMULATION.final_without_reason_after is not None and position >= SIMULATION.final_without_reason_after:
            seq.finished = [True] * len(seq.finished)
            result = Result(True, [[]], [FinishReason.NOT_FINISHED], index, cached_tokens=seq.cached)
            return Response(seq.request.id, result)
        token = _model_token(seq, index, position)
        reason = FinishReason.NOT_FINISHED
        new: list[int] = []
        logprobs: list[Any] | None = None
        if token == self._end_id and not params.ignore_eos:
            reason = FinishReason.END_ID
        else:
            new = [token]
            generated.append(token)
            self.tokens_produced += 1
            if params.logprobs:
                value = -0.25 * (1 + position % 3)
                seq.cum_logprob[index] += value
                logprobs = [_logprobs(token, value, params.logprobs)]
            if seq.stop_words and any(generated[-len(w) :] == w for w in seq.stop_words):
                reason = FinishReason.STOP_WORDS
            elif len(generated) >= params.max_tokens:
                reason = FinishReason.LENGTH
        if reason is not FinishReason.NOT_FINISHED:
            seq.finished[index] = True
        result = Result(
            is_final=all(seq.finished),
            output_token_ids=[new],
            finish_reasons=[reason],
            sequence_index=index,
            log_probs=[logprobs] if logprobs is not None else None,
            cum_log_probs=[seq.cum_logprob[index]] if params.logprobs else None,
            decoding_iter=seq.iterations,
            cached_tokens=seq.cached,
            avg_decoded_tokens_per_iter=1.0,
        )
        return Response(seq.request.id, result)

    def _release(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self._kv_used -= seq.reserved
        elif seq in self._waiting:
            self._waiting.remove(seq)

    def _deliver(self, out: Iterable[tuple[_Sequence, Response]]) -> None:
        queues: dict[Any, dict[int, _SyncQueue]] = collections.defaultdict(dict)
        for seq, response in out:
            if response.result is None or response.result.is_final:
                self._release(seq)
            seq.queue.put_nowait(response)
            queues[seq.queue.loop][id(seq.queue)] = seq.queue
        for loop, targets in queues.items():
            with contextlib.suppress(RuntimeError):  # the caller's event loop is gone (its test or server ended)
                _SyncQueue.notify_many(loop, targets.values())


def _key(tokens: list[int]) -> bytes:
    return b"".join(t.to_bytes(4, "little") for t in tokens)


def _model_text(prompt: list[int], params: SamplingParams) -> tuple[list[int], int]:
    """The simulated model's text for one request, as piece ids, and where sampling starts reading it: greedy
    decoding repeats the prompt's text; sampling walks the prompt and CORPUS from a start the seed picks. Pieces
    are re-cut from the text's bytes, three at a time."""
    text = b"".join(piece_bytes(t) for t in prompt) or CORPUS_BYTES
    if params._greedy_decoding:
        return piece_ids(text), 0
    return piece_ids(text + b" " + CORPUS_BYTES), zlib.crc32(_key(prompt)) + 104729 * (params.seed or 0)


def _model_token(seq: _Sequence, index: int, position: int) -> int:
    """The simulated model's token at `position` of sequence `index` (each sequence starts elsewhere)."""
    if SIMULATION.eos_after is not None and position == SIMULATION.eos_after:
        return EOS
    if seq.request.sampling_params._greedy_decoding:
        return seq.pieces[position % len(seq.pieces)]
    return seq.pieces[(seq.start + 7919 * index + position) % len(seq.pieces)]


def _logprobs(token: int, value: float, top: int) -> Any:
    if SIMULATION.logprobs_format == "float":
        return value
    entries = {token: Logprob(value, 1)}
    for rank in range(2, top + 1):
        entries[token + 4 * rank] = Logprob(value - math.log(rank) - 0.5, rank)
    return entries
