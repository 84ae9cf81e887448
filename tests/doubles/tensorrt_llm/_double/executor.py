"""NOT a mirror: the simulated worker process, standing in for TensorRT-LLM's PyExecutor and its sampler.

One thread runs the step loop, as the real worker runs in its own MPI process; it talks to the proxy only through its
request queue (`submit`, `abort_request`, `stop`) and the dispatch callback. Each step:
1. takes new requests (their arrival time) and cancellations; a cancellation lands `SIMULATION.cancel_steps` steps
   after `abort_request` (it crosses the IPC queue, and the PyExecutor acts on it at a later iteration): the request
   keeps generating until then, then gets a final CANCELLED response, its slot and KV freed;
2. admits waiting requests in arrival order while fewer than `max_batch_size` run and the KV budget allows it
   (GUARANTEED_NO_EVICT reserves prompt + max_tokens, MAX_UTILIZATION only the prompt);
3. spends at most `max_num_tokens` tokens: one decode token for every generating sequence first, then prompt chunks
   in arrival order (without chunked prefill a prompt must fit the rest of the budget whole); a prompt's last chunk
   yields its first token, as a context step does;
4. answers a sequence when its decoding iteration is the first, a multiple of `stream_interval`, or its last
   (`PyExecutor._handle_responses`: `py_decoding_iter == 1 or is_finished or py_decoding_iter % stream_interval
   == 0`), with every token since its previous response; through simulated postprocess workers when
   `num_postprocess_workers > 0`; then the proxy wakes the event loops once per step.
5. with `enable_iter_perf_stats`, records the iteration's stats as `IterationStats.to_json_str()` would (the real
   JSON names, a subset of the fields), after the step's finished requests freed their blocks, as `_executor_loop`
   runs `_handle_responses` before `_process_iter_stats`; `SIMULATION.iteration_stats_before_release` takes them
   before instead. `fetch_stats` hands them over (what the worker's stats thread sends the proxy); without the
   setting there are none (`get_latest_iteration_stats` returns []). KV blocks: a running sequence holds
   ceil((prompt + generated tokens) / block_size) blocks of `kv_cache_tokens // block_size` (a prefix shared with
   another sequence is counted for each, which the real block manager would share).
Prompt prefixes are remembered block by block under the request's cache salt, so a repeated prefix with the same salt
(or none) is reported as `cached_tokens` and skipped; another salt never matches.

The sampler is what `TorchLlmArgs.sampler_type` picks (`auto`: TorchSampler, there being no beam search):
- TorchSampler (`_torch/pyexecutor/sampler.py`, 1.2-era): one torch.Generator for every request, seeded once with
  `_global_seed = 42`; a request's strategy comes from temperature, top_p and top_k only (`_request_get_sampling_params`
  / `UtilsSamplingParams`): its seed, min_p and penalties play no part. Logprobs are the distribution's top k
  (`handle_logprobs`: `Logprob(logprob, rank)` for the top-k indices), so the sampled token is among them only when
  its rank is within k: here its rank cycles 1, 2, 3 along the sequence.
- TRTLLMSampler (the C++ decoder, `GptDecoderBatched`): the request's SamplingConfig (`SamplingParams.
  _get_sampling_config`) with its seed (unset: 0, the runtime's default), penalties and min_p; logprobs are the
  sampled token's alone, `{token: Logprob(logprob, rank=1)}` (`update_requests_single_beam_single_step`).

Guided decoding (`guided_decoding_backend="llguidance"`; `_double/guidance.py`): a request whose SamplingParams carry
a guide gets one llguidance matcher per sequence when its context ends, and then decodes one byte piece at a time
among the tokens the matcher allows. Without a backend there is no guided decoder and a request's guide is ignored,
as in 1.2.1 (`create_py_executor` builds the GuidedDecoder only for a configured backend); "xgrammar" is not
simulated (`LLM(...)` raises NotImplementedError).

The worker can die: `SIMULATION.worker_death`, a guide llguidance cannot compile (the ValueError is raised inside the
step, as `GuidedDecoder._build` raises it; what 1.2.1's PyExecutor does with it is not verified, and the double takes
the worst case), or a prompt token at or past the model's vocabulary (a CUDA device-side assert in the embedding). It
then stops at once, answers nothing more, and hands its exception to the proxy's done callback (`mpi_done_callback`).
"""

from __future__ import annotations

import collections
import copy
import datetime
import json
import math
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tensorrt_llm._double import SIMULATION
from tensorrt_llm._double.guidance import Guide
from tensorrt_llm._double.tokenizer import EOS, EOT, piece_bytes, piece_ids
from tensorrt_llm.bindings.executor import (
    FinishReason,
    GuidedDecodingParams,
    KvCacheMetrics,
    RequestPerfMetrics,
    TimingMetrics,
)
from tensorrt_llm.executor.postproc_worker import PostprocWorker
from tensorrt_llm.executor.result import DetokenizedGenerationResultBase, Logprob
from tensorrt_llm.llmapi.llm_args import CapacitySchedulerPolicy, SamplerType

if TYPE_CHECKING:
    from tensorrt_llm.executor.request import GenerationRequest
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
    from tensorrt_llm.llmapi.tokenizer import TransformersTokenizer
    from tensorrt_llm.sampling_params import SamplingParams

CORPUS = (
    "The river runs quietly past the old mill, where light falls on wet stone. Café au lait, naïve façades, "
    "Ångström and smörgåsbord; 日本語のテキスト、中文文本 — emoji too: 🌊🐟✨. Numbers: 3.14159, 2.71828. "
)
CORPUS_BYTES = CORPUS.encode("utf-8")
DEFAULT_MAX_BATCH_SIZE = 2048
CATCH_UP_STEPS = 8
IDLE_POLL_SECONDS = 0.02
"""An idle worker still looks at SIMULATION this often (a death set while nothing runs is noticed)."""
TORCH_SAMPLER_SEED = 42
"""TorchSampler's `_global_seed`: the one generator every request draws from."""
DEVICE_ASSERT = "CUDA error: device-side assert triggered (index out of bounds in the embedding lookup)"


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
    request_perf_metrics: RequestPerfMetrics | None = None


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
    """One request inside the simulated worker."""

    request: GenerationRequest
    id: int
    arrival: float = 0.0
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    cached: int = 0
    prefilled: int = 0
    reserved: int = 0
    generated: list[list[int]] = field(default_factory=list)
    unsent: list[list[int]] = field(default_factory=list)
    unsent_logprobs: list[list[Any]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    cum_logprob: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    pieces: list[int] = field(default_factory=list)  # the simulated model's text, cut once at arrival
    start: int = 0  # where a sampled sequence 0 starts reading `pieces`
    stop_words: list[list[int]] = field(default_factory=list)  # non-empty stop word ids, read once
    guide: GuidedDecodingParams | None = None  # the request's guide, when the executor has a guided decoder
    guides: list[Guide] = field(default_factory=list)  # one matcher per sequence, from the end of the context on
    text: bytes = b""  # a guided request's model text, decoded a byte at a time
    record: DetokenizedGenerationResultBase | None = None  # its postprocess worker's fold, when there are workers

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def params(self) -> SamplingParams:
        return self.request.sampling_params

    @property
    def in_context(self) -> bool:
        return self.cached + self.prefilled < len(self.prompt)


class SimulatedExecutor:
    """Runs requests in flight, batched per step, on one background thread; see the module docstring."""

    instances: ClassVar[list[SimulatedExecutor]] = []
    """Every worker created in this process (kept: benchmarks read their counters at exit)."""

    def __init__(
        self,
        args: TorchLlmArgs,
        end_id: int,
        vocab_size: int,
        tokenizer: TransformersTokenizer | None,
        dispatch: Callable[[Iterable[Any]], None],
        done: Callable[[BaseException | None], None],
    ) -> None:
        self._args = args
        self._end_id = end_id
        self._vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._dispatch = dispatch
        self._done = done
        self.sampler = SamplerType.TRTLLMSampler if args.sampler_type == "TRTLLMSampler" else SamplerType.TorchSampler
        if args.guided_decoding_backend not in (None, "llguidance"):
            raise NotImplementedError(
                f"the double simulates the llguidance backend only, not {args.guided_decoding_backend}"
            )
        self.guided = args.guided_decoding_backend is not None
        self.guided_sequences = 0  # guided sequences decoded (matchers created), for tests
        self._generator = random.Random(TORCH_SAMPLER_SEED)
        self.max_batch_size = args.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        self.max_num_tokens = args.max_num_tokens or 8192
        self._lock = threading.Condition()
        self._incoming: collections.deque[_Sequence] = collections.deque()
        self._cancel_requests: set[int] = set()
        self._cancelling: dict[int, int] = {}  # request id -> steps until the cancellation lands
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._kv_used = 0
        self._prefixes: set[bytes] = set()
        self._stopping = False
        self.died: BaseException | None = None
        self.steps = 0
        self.largest_batch = 0
        self.cpu_seconds = 0.0  # CPU the step loop itself used (thread time): benchmarks subtract it
        self.tokens_produced = 0  # tokens handed to results (end tokens excluded)
        self.cancels = 0  # CancellingRequests received
        self.last_admitted = (0, 0)  # (prompt tokens it had to compute, prompt tokens) of the latest admission
        self._stats: list[str] = []  # iteration stats not yet fetched, as JSON (guarded by _lock)
        SimulatedExecutor.instances.append(self)
        self._thread = threading.Thread(target=self._run, name="trtllm-double-worker", daemon=True)
        self._thread.start()

    # -- the request queue, as the proxy uses it -----------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        assert request.id is not None
        with self._lock:
            self._incoming.append(_Sequence(request, request.id))
            self._lock.notify()

    def abort_request(self, request_id: int) -> None:
        with self._lock:
            self.cancels += 1
            self._cancel_requests.add(request_id)
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join()

    def fetch_stats(self) -> list[str]:
        """The iterations' stats recorded since the last call, oldest first (each `IterationStats` JSON)."""
        with self._lock:
            stats, self._stats = self._stats, []
        return stats

    @property
    def in_flight(self) -> int:
        """Requests holding a slot or waiting for one (what an abort must bring down)."""
        with self._lock:
            return len(self._running) + len(self._waiting) + len(self._incoming)

    # -- the step loop -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._loop()
        except BaseException as exc:  # the worker process dies: nothing more is answered
            error = self.died = exc
        self._done(error)

    def _loop(self) -> None:
        next_step = time.monotonic()
        while True:
            with self._lock:
                while not (self._stopping or SIMULATION.worker_death or self._busy()):
                    self._lock.wait(IDLE_POLL_SECONDS)
                if self._stopping:
                    return
                arrivals = list(self._incoming)
                self._incoming.clear()
                cancels, self._cancel_requests = self._cancel_requests, set()
            if SIMULATION.worker_death is not None:
                raise SIMULATION.worker_death
            started, began = time.thread_time(), time.monotonic()
            out: list[tuple[_Sequence, Response]] = []
            self._arrive(arrivals)
            self._apply_cancellations(cancels, out)
            self._admit()
            held = self._kv_blocks()
            self._step(out)
            self._deliver(out)
            if self._args.enable_iter_perf_stats:
                used = held if SIMULATION.iteration_stats_before_release else self._kv_blocks()
                self._record_stats(used, began, out)
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

    def _kv_blocks(self) -> int:
        """KV blocks the running sequences hold: their prompt and generated tokens, rounded up to whole blocks."""
        block = SIMULATION.block_size
        return sum(math.ceil((len(s.prompt) + max(map(len, s.generated), default=0)) / block) for s in self._running)

    def _record_stats(self, used: int, began: float, out: list[tuple[_Sequence, Response]]) -> None:
        """This iteration's `IterationStats`, with the names `to_json_str` gives them (`jsonSerialization.cpp`)."""
        total = SIMULATION.kv_cache_tokens // SIMULATION.block_size
        finished = sum(1 for _, r in out if r.result is None or r.result.is_final)
        stats = {
            "timestamp": datetime.datetime.now().strftime("%m-%d-%Y %H:%M:%S.%f"),
            "iter": self.steps,
            "iterLatencyMS": (time.monotonic() - began) * 1000,
            "numActiveRequests": len(self._running),
            "numQueuedRequests": len(self._waiting),
            "numCompletedRequests": finished,
            "maxNumActiveRequests": self.max_batch_size,
            "gpuMemUsage": 0,
            "cpuMemUsage": 0,
            "pinnedMemUsage": 0,
            "kvCacheStats": {
                "maxNumBlocks": total,
                "freeNumBlocks": total - used,
                "usedNumBlocks": used,
                "tokensPerBlock": SIMULATION.block_size,
                "allocTotalBlocks": used,
                "allocNewBlocks": used,
                "reusedBlocks": 0,
                "missedBlocks": 0,
                "cacheHitRate": 0.0,
            },
            "inflightBatchingStats": {
                "numScheduledRequests": len(self._running),
                "numContextRequests": sum(1 for s in self._running if s.in_context),
                "numGenRequests": sum(1 for s in self._running if not s.in_context),
                "numPausedRequests": 0,
                "numCtxTokens": 0,
                "microBatchId": 0,
                "avgNumDecodedTokensPerIter": 1.0,
            },
        }
        with self._lock:
            self._stats.append(json.dumps(stats))

    def _busy(self) -> bool:
        return bool(self._incoming or self._waiting or self._running or self._cancel_requests or self._cancelling)

    def _arrive(self, arrivals: list[_Sequence]) -> None:
        now = time.monotonic()
        for seq in arrivals:
            n = seq.params.best_of or 1
            seq.arrival = now
            seq.generated = [[] for _ in range(n)]
            seq.unsent = [[] for _ in range(n)]
            seq.unsent_logprobs = [[] for _ in range(n)]
            seq.finished = [False] * n
            seq.cum_logprob = [0.0] * n
            seq.iterations = [0] * n
            seq.pieces, seq.start = self._model_text(seq.prompt, seq.params)
            seq.stop_words = [w for w in seq.params._get_stop_words() if w]
            seq.guide = seq.params._get_guided_decoding_params() if self.guided else None
            self._waiting.append(seq)

    def _apply_cancellations(self, cancels: set[int], out: list[tuple[_Sequence, Response]]) -> None:
        for request_id in cancels:
            self._cancelling.setdefault(request_id, SIMULATION.cancel_steps)
        if not self._cancelling:
            return
        live = {s.id: s for s in (*self._waiting, *self._running)}
        for request_id, steps in list(self._cancelling.items()):
            seq = live.get(request_id)
            if seq is None:  # it finished meanwhile (the real worker logs the cancel and moves on)
                del self._cancelling[request_id]
            elif steps > 0:
                self._cancelling[request_id] = steps - 1
            else:
                del self._cancelling[request_id]
                self._release(seq)
                n = len(seq.generated)
                result = Result(True, [[] for _ in range(n)], [FinishReason.CANCELLED] * n, cached_tokens=seq.cached)
                result.request_perf_metrics = self._perf_metrics(seq)
                out.append((seq, Response(seq.id, result)))

    def _admit(self) -> None:
        policy = self._args.scheduler_config.capacity_scheduler_policy
        while self._waiting and len(self._running) < self.max_batch_size:
            seq = self._waiting[0]
            need = len(seq.prompt)
            if policy is CapacitySchedulerPolicy.GUARANTEED_NO_EVICT:
                need += seq.params.max_tokens
            if self._kv_used + need > SIMULATION.kv_cache_tokens and self._running:
                return
            self._waiting.popleft()
            seq.reserved = need
            seq.scheduled = time.monotonic()
            self._kv_used += need
            reuse = self._args.kv_cache_config.enable_block_reuse
            seq.cached = self._cached_prefix(seq.prompt, seq.request.cache_salt_id) if reuse else 0
            self.last_admitted = (len(seq.prompt) - seq.cached, len(seq.prompt))
            self._running.append(seq)

    def _cached_prefix(self, prompt: list[int], salt: int | None) -> int:
        block = SIMULATION.block_size
        cached = 0
        for end in range(block, len(prompt), block):  # the last token is always computed
            if _key(prompt[:end], salt) not in self._prefixes:
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
            if seq.prefilled == 0 and any(t >= self._vocab_size for t in seq.prompt):
                raise RuntimeError(DEVICE_ASSERT)  # the embedding lookup of this batch: the process is lost
            chunk = min(remaining, budget)
            budget -= chunk
            seq.prefilled += chunk
            if not seq.in_context:
                if seq.guide is not None:  # GuidedDecoder._build: the matchers are made at the last context chunk
                    seq.guides = [Guide(seq.guide) for _ in seq.generated]
                    seq.text = b"".join(piece_bytes(t) for t in seq.pieces)
                    self.guided_sequences += len(seq.guides)
                produced.extend((seq, index) for index in range(len(seq.generated)))
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len({id(s) for s, _ in produced}))
        for seq, index in produced:
            response = self._generate(seq, index)
            if response is not None:
                out.append((seq, response))
        for seq in [s for s in self._running if all(s.finished)]:
            self._release(seq)
            if self._args.kv_cache_config.enable_block_reuse:
                block = SIMULATION.block_size
                salt = seq.request.cache_salt_id
                self._prefixes.update(_key(seq.prompt[:end], salt) for end in range(block, len(seq.prompt) + 1, block))

    def _generate(self, seq: _Sequence, index: int) -> Response | None:
        """Decode one token of sequence `index`; the response to send now, or None while the stream interval waits."""
        params = seq.params
        generated = seq.generated[index]
        seq.iterations[index] += 1
        position = len(generated)
        if SIMULATION.request_error_after is not None and position >= SIMULATION.request_error_after:
            seq.finished = [True] * len(seq.finished)
            return Response(seq.id, None, f"simulated executor error in request {seq.id}")
        if SIMULATION.final_without_reason_after is not None and position >= SIMULATION.final_without_reason_after:
            seq.finished = [True] * len(seq.finished)
            return Response(seq.id, Result(True, [[]], [FinishReason.NOT_FINISHED], index, cached_tokens=seq.cached))
        if seq.guides:
            token = seq.guides[index].next_token(self._model_byte(seq, index, position))
        else:
            token = self._model_token(seq, index, position)
        reason = FinishReason.NOT_FINISHED
        now = time.monotonic()
        if seq.first_token is None:
            seq.first_token = now
        seq.last_token = now
        if token == self._end_id and not params.ignore_eos:
            reason = FinishReason.END_ID
        else:
            generated.append(token)
            seq.unsent[index].append(token)
            self.tokens_produced += 1
            if params.logprobs:
                rank = self._sampled_rank(params, position)
                value = -0.25 - math.log(rank) - (0.5 if rank > 1 else 0.0)
                seq.cum_logprob[index] += value
                seq.unsent_logprobs[index].append(self._logprobs(token, value, rank, params.logprobs))
            if seq.stop_words and any(generated[-len(w) :] == w for w in seq.stop_words):
                reason = FinishReason.STOP_WORDS
            elif len(generated) >= params.max_tokens:
                reason = FinishReason.LENGTH
        if reason is not FinishReason.NOT_FINISHED:
            seq.finished[index] = True
        iteration = seq.iterations[index]
        interval = params._stream_interval or 1
        if reason is FinishReason.NOT_FINISHED and iteration != 1 and iteration % interval:
            return None
        new, seq.unsent[index] = seq.unsent[index], []
        logprobs, seq.unsent_logprobs[index] = seq.unsent_logprobs[index], []
        result = Result(
            is_final=all(seq.finished),
            output_token_ids=[new],
            finish_reasons=[reason],
            sequence_index=index,
            log_probs=[logprobs] if params.logprobs else None,
            cum_log_probs=[seq.cum_logprob[index]] if params.logprobs else None,
            decoding_iter=iteration,
            cached_tokens=seq.cached,
            avg_decoded_tokens_per_iter=1.0,
            request_perf_metrics=self._perf_metrics(seq) if params.return_perf_metrics else None,
        )
        return Response(seq.id, result)

    def _perf_metrics(self, seq: _Sequence) -> RequestPerfMetrics:
        def at(seconds: float | None) -> datetime.timedelta:
            return datetime.timedelta(seconds=seconds or 0.0)

        block = SIMULATION.block_size
        prompt_blocks = math.ceil(len(seq.prompt) / block)
        reused = seq.cached // block
        total = math.ceil((len(seq.prompt) + max(map(len, seq.generated), default=0)) / block)
        return RequestPerfMetrics(
            TimingMetrics(at(seq.arrival), at(seq.scheduled), at(seq.first_token), at(seq.last_token)),
            KvCacheMetrics(total, total - reused, reused, prompt_blocks - reused, reused / max(prompt_blocks, 1)),
            first_iter=None,
            last_iter=self.steps,
            iter=self.steps,
        )

    def _sampled_rank(self, params: SamplingParams, position: int) -> int:
        """The emitted token's rank in the distribution: first when greedy, cycling 1, 2, 3 when sampled."""
        return 1 if params._greedy_decoding else 1 + position % 3

    def _logprobs(self, token: int, value: float, rank: int, top: int) -> Any:
        if SIMULATION.logprobs_format == "float":
            return value
        if self.sampler is SamplerType.TRTLLMSampler:
            return {token: Logprob(value, 1)}  # the C++ decoder's log_probs: the sampled token's alone
        entries: dict[int, Logprob] = {}
        for r in range(1, top + 1):  # the distribution's top k; the sampled token only if its rank is within it
            candidate = token if r == rank else token + 4 * (r + 7)
            entries[candidate] = Logprob(-0.25 - math.log(r) - (0.5 if r > 1 else 0.0), r)
        return entries

    def _release(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self._kv_used -= seq.reserved
        elif seq in self._waiting:
            self._waiting.remove(seq)

    def _deliver(self, out: list[tuple[_Sequence, Response]]) -> None:
        batch: list[Any] = []
        for seq, response in out:
            if response.result is None or response.result.is_final:
                self._release(seq)
            batch.append(self._postprocess(seq, response) if self._args.num_postprocess_workers else response)
        if batch:
            self._dispatch(batch)

    def _postprocess(self, seq: _Sequence, response: Response) -> Any:
        """What a postprocess worker makes of a response: its own fold, the CompletionOutput sent back whole."""
        if response.result is None:
            return response  # errors go to the proxy directly
        if seq.record is None:
            seq.record = DetokenizedGenerationResultBase(
                seq.id, seq.params, tokenizer=self._tokenizer, streaming=seq.request.streaming
            )
        seq.record._handle_response(response)
        output = copy.deepcopy(seq.record.outputs[0])  # pickled across the IPC pipe
        return PostprocWorker.Output(seq.id, output, response.result.is_final)

    # -- the simulated model ---------------------------------------------------------------------------------------

    def _model_text(self, prompt: list[int], params: SamplingParams) -> tuple[list[int], int]:
        """The simulated model's text for one request, as piece ids, and where sampling starts reading it: greedy
        decoding repeats the prompt's text; sampling walks the prompt and CORPUS from a start the sampler picks.
        Pieces are re-cut from the text's bytes, three at a time."""
        text = b"".join(piece_bytes(t) for t in prompt) or CORPUS_BYTES
        if params._greedy_decoding:
            return piece_ids(text), 0
        start = zlib.crc32(_key(prompt, None))
        if self.sampler is SamplerType.TRTLLMSampler:  # the request's own seed; penalties and min_p applied
            start += 104729 * (params.seed or 0)
            start += 7919 * round(1000 * (params.repetition_penalty or 1.0)) + 31 * round(1000 * (params.min_p or 0))
        else:  # TorchSampler: the next draw from the one shared generator, whatever the request's seed
            start += self._generator.randrange(1 << 31)
        return piece_ids(text + b" " + CORPUS_BYTES), start

    def _model_token(self, seq: _Sequence, index: int, position: int) -> int:
        """The simulated model's token at `position` of sequence `index` (each sequence starts elsewhere)."""
        if SIMULATION.eos_after is not None and position == SIMULATION.eos_after:
            return EOS
        if SIMULATION.eot_after is not None and position == SIMULATION.eot_after:
            return EOT
        if seq.params._greedy_decoding:
            return seq.pieces[position % len(seq.pieces)]
        return seq.pieces[(seq.start + 7919 * index + position) % len(seq.pieces)]

    def _model_byte(self, seq: _Sequence, index: int, position: int) -> int:
        """The byte the simulated model's text has at `position` of a guided sequence (decoded a byte at a time)."""
        text = seq.text
        if seq.params._greedy_decoding:
            return text[position % len(text)]
        return text[(seq.start + 7919 * index + position) % len(text)]


def _key(tokens: list[int], salt: int | None) -> bytes:
    """A prefix's identity in the KV cache: its tokens, under its cache salt (the block hashes include it)."""
    prefix = b"" if salt is None else salt.to_bytes(8, "little")
    return prefix + b"".join(t.to_bytes(4, "little") for t in tokens)
