"""The trtllm engine: TensorRT-LLM's LLM API on NVIDIA GPUs (PyTorch backend, in-flight batching inside it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from rillet.server.config import TrtllmConfig, TrtllmSampler
from rillet.server.engine.base import TextEvent
from rillet.server.engine.constraints import Checker
from rillet.server.engine.lifecycle import EngineLifecycle, State, closed_error, dead_error
from rillet.server.engine.prompt import PromptPolicy
from rillet.server.engine.text import check_request
from rillet.server.engine.trtllm.api import (
    capabilities,
    check_gpus,
    executor_failure,
    guide,
    guided_decoding,
    import_api,
    llm_kwargs,
)
from rillet.server.engine.trtllm.stream import Deltas, engine_timings
from rillet.server.errors import (
    ConfigurationError,
    DeadlineExceeded,
    EngineDead,
    Internal,
    InvalidArgument,
    RilletError,
)
from rillet.server.reasons import Reason
from rillet.server.types import (
    GREEDY_BELOW_TEMPERATURE,
    ChatMessage,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Prompt,
    TraceContext,
    Usage,
)

if TYPE_CHECKING:
    from tensorrt_llm import LLM
    from tensorrt_llm.executor.result import CompletionOutput
    from tensorrt_llm.llmapi.llm import RequestOutput
    from tensorrt_llm.llmapi.tokenizer import TokenizerBase
    from tensorrt_llm.sampling_params import SamplingParams as TrtSamplingParams

log = logging.getLogger(__name__)

ENGINE_NAME = "trtllm"

LONG_PROMPT_CHARS = 4096
"""Prompts longer than this are tokenized in a worker thread; a short one costs less than the thread hop."""

CLOSE_GRACE_SECONDS = 5.0
"""How long `aclose` lets aborted streams receive their CANCELLED finish before the executor shuts down."""

SHUTDOWN_SECONDS = 30.0
"""How long `aclose` waits for `LLM.shutdown()`: with a dead worker it can wait on its IPC forever."""


HEALTH_POLL_SECONDS = 0.5
"""While streams are in flight, how often the engine asks TensorRT-LLM whether its executor still lives."""

_SHUTTING_DOWN = "LLM is shutting down"
"""The RuntimeError message `LLM.generate_async` raises once the executor is gone."""


def served_name(config: TrtllmConfig) -> str:
    """The model name clients use: `model_name`, else the model id's or directory's last component."""
    return config.model_name or PurePath(config.model.rstrip("/")).name or config.model


def trace_headers(trace: TraceContext | None) -> dict[str, str] | None:
    """The W3C headers TensorRT-LLM parents its own spans on (`generate_async(trace_headers=...)`)."""
    if trace is None:
        return None
    headers = {"traceparent": trace.traceparent}
    if trace.tracestate:
        headers["tracestate"] = trace.tracestate
    return headers


@dataclass(eq=False, slots=True)
class _Stream:
    """One request in flight.

    `waiting` is its consumer's task while it awaits TensorRT-LLM's next output: the only moment the engine may
    interrupt it (`_die` cancels it there, and the stream turns that one cancellation into EngineDead).
    """

    result: RequestOutput
    waiting: asyncio.Task[Any] | None = None
    killed: bool = False
    cancelling: int = 0  # the task's pending cancellations before `_die` added its own


class TrtllmEngine(EngineLifecycle):
    """Text generation on TensorRT-LLM's LLM API (PyTorch backend) with in-flight batching on NVIDIA GPUs.

    TensorRT-LLM owns the batching: up to `max_batch_size` sequences in flight, `max_num_tokens` per executor step,
    prompts chunked across steps; Rillet admits at most `slots` (= max_batch_size) streams, so the rest wait in
    Rillet's own admission queue. Each stream is one `generate_async(..., streaming=True)` read on the event loop
    (results arrive from TensorRT-LLM's dispatch thread; the GPU work runs in its worker processes).

    Stream contract specifics: prompts are tokenized here (text, token ids checked against the model's vocabulary,
    chat through the model's template), so their length is known before submission (`PromptPolicy`); stop strings are
    matched here on TensorRT-LLM's cumulative text and the request is aborted at the first match (TensorRT-LLM's own
    stop words truncate token ids and can leave a stop word's prefix in the text); the ids of all deltas together
    number `usage.output_tokens`. What the configured sampler cannot honour is refused (api.capabilities). Output
    constraints go to TensorRT-LLM's guided decoding (`SamplingParams.guided_decoding`) when
    `guided_decoding_backend` is llguidance, after llguidance itself validated them here (`constraints.Checker`), so a
    bad one is INVALID_ARGUMENT before submission and never reaches the executor; with no backend every constrained
    request is refused (TensorRT-LLM would drop the guide silently). Cancel, disconnect and deadline all close the
    stream, and the stream's `finally` aborts the request then (never a poll). With `return_perf_metrics`,
    TensorRT-LLM's own timing splits the time to the first token into engine queue and prefill; without it, the
    finish carries `first_output_seconds` (submission to the first output, TensorRT-LLM's queueing included).

    Lifecycle (EngineLifecycle): NEW → STARTING (loading, then a warm-up request) → SERVING; a stream asked before
    then is refused WARMING_UP. Death: a worker process that dies leaves 1.2.1's proxy unaware until its next
    submit, so while streams are in flight the engine asks every HEALTH_POLL_SECONDS (`executor_failure`);
    `healthy()` asks too. Once dead, every stream fails with EngineDead (those waiting on TensorRT-LLM at once), and so
    does every new one: the server drains and exits non-zero, as for the other engines.

    Capabilities (engine/base.py): Tokenizing, through the prompt path generation takes (`_encode`); KvCacheReporting
    only where TensorRT-LLM reports its KV cache (`enable_iter_perf_stats`): `TrtllmEngine(config)` is then a
    KvReportingTrtllmEngine, and without the stats no engine has `kv_cache_utilization` to find.
    """

    def __new__(cls, config: TrtllmConfig) -> TrtllmEngine:
        if cls is TrtllmEngine and config.enable_iter_perf_stats:
            from rillet.server.engine.trtllm.kvstats import KvReportingTrtllmEngine  # a subclass of this one

            cls = KvReportingTrtllmEngine
        return super().__new__(cls)

    def __init__(self, config: TrtllmConfig) -> None:
        """Check that TensorRT-LLM, enough GPUs and a model are there; raises EngineDead with what to do otherwise."""
        self._config = config
        self._api = import_api()
        check_gpus(config, self._api.device_count())
        if not config.model:
            raise ConfigurationError(
                "the trtllm engine needs a model: set trtllm.model (RILLET_TRTLLM__MODEL) to a Hugging Face model id "
                "or a local checkpoint directory",
            )
        self._kwargs = llm_kwargs(config, self._api)
        self._checker: Checker | None = guided_decoding(config)
        self._capabilities = capabilities(config.sampler, guided=self._checker is not None)
        self._llm: LLM | None = None
        self._policy = PromptPolicy(vocab_size=0, context_length=config.max_seq_len)  # the vocabulary comes at start
        self._in_flight: dict[RequestOutput, _Stream] = {}
        self._drained = asyncio.Event()  # set whenever nothing is in flight
        self._death: str | None = None  # why the executor can serve nothing more, once it cannot
        self._watchdog: asyncio.Task[None] | None = None
        super().__init__(ENGINE_NAME, (self._model_info(supports_chat=False),), config.max_batch_size)

    def _model_info(self, supports_chat: bool) -> ModelInfo:
        config = self._config
        layout = f"{config.tensor_parallel_size} GPU tensor parallel, {config.pipeline_parallel_size} pipeline stages"
        return ModelInfo(
            name=served_name(config),
            kind=ModelKind.TEXT_GENERATION,
            engine=ENGINE_NAME,
            description=f"{config.model} on TensorRT-LLM {self._api.version} (PyTorch backend, in-flight batching; "
            f"{layout}; {config.sampler.value} sampler; guided decoding: {config.guided_decoding_backend.value})",
            context_length=config.max_seq_len,
            supports_chat=supports_chat,
            max_tokens_limit=config.max_seq_len - 1,
            capabilities=self._capabilities,
        )

    @property
    def serves(self) -> Literal[ModelKind.TEXT_GENERATION]:
        return ModelKind.TEXT_GENERATION

    def healthy(self) -> bool:
        """False once closed or once the executor died (asked of TensorRT-LLM itself on every call)."""
        if super().healthy() and self._llm is not None:
            failure = executor_failure(self._llm)
            if failure is not None:
                self._die(failure)
        return super().healthy()

    async def start(self) -> None:
        """Load the model (TensorRT-LLM starts its executor), then warm up; EngineDead when either fails."""
        self._mark_starting()
        try:
            llm = await asyncio.to_thread(self._api.llm, **self._kwargs)  # minutes for a large model: off the loop
        except Exception as exc:
            self._death = f"TensorRT-LLM could not load {self._config.model!r}: {exc}"
            self._mark_dead()
            raise EngineDead(self._death, reason=Reason.ENGINE_START_FAILED) from exc
        self._llm = llm
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="trtllm-watchdog")
        tokenizer = llm.tokenizer
        if tokenizer is None:
            await self._fail_start(
                "the trtllm engine needs the model's tokenizer (skip_tokenizer_init is not supported)"
            )
        config = self._config
        self._policy = PromptPolicy(
            vocab_size=_vocabulary(llm, tokenizer),
            context_length=config.max_seq_len,
            max_prompt_tokens=None if config.enable_chunked_prefill else config.max_num_tokens,
        )
        try:
            tokenizer.get_chat_template()
            supports_chat = True
        except ValueError:  # Hugging Face's answer when the model has no chat template
            supports_chat = False
        self._models = (self._model_info(supports_chat),)
        try:
            await self._warm_up()
        except RilletError as exc:
            await self._fail_start(f"the trtllm engine failed its warm-up request: {exc.message}", exc)
        self._mark_serving()

    async def _fail_start(self, why: str, cause: BaseException | None = None) -> NoReturn:
        """The loaded engine cannot serve: DEAD, its executor shut down, and EngineDead saying why."""
        self._death = why
        self._mark_dead()
        await self.aclose()
        raise EngineDead(why) from cause

    async def _warm_up(self) -> None:
        """One short greedy generation through the whole path (CUDA graphs, sampler, detokenizer) before SERVING."""
        request = GenerationRequest("trtllm-warm-up", self._models[0].name, "Hello", 2)
        async for _ in self._generate(request, warm_up=True):
            pass

    async def aclose(self) -> None:
        """Abort what is in flight (those streams end CANCELLED) and release the executor and its GPU memory."""
        self._mark_closed()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._death is None:  # a dead executor answers nothing: its streams fail on their own
            for stream in list(self._in_flight.values()):
                self._abort(stream.result)  # each stream then reads its CANCELLED finish and releases itself
            if self._in_flight:  # let the executor deliver those finishes before it goes (bounded: it may be stuck)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), CLOSE_GRACE_SECONDS)
        llm, self._llm = self._llm, None
        if llm is not None:
            await _shut_down(llm)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        return self._generate(request)

    def tokenize(self, model: str, prompt: str | tuple[ChatMessage, ...]) -> list[int]:
        """base.Tokenizing: the ids a generation with this prompt reads (`_encode`, its own path), refused as there."""
        return self._encode(self._tokenizer(), prompt)

    def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        """base.Tokenizing: the text a stream carries for the ids (special tokens skipped, as generation asks)."""
        tokenizer = self._tokenizer()
        self._policy.check_ids(token_ids)
        return tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _tokenizer(self) -> TokenizerBase:
        """The model's tokenizer while the engine serves (the tokenizer RPCs call from a worker thread)."""
        tokenizer = self._running(warm_up=False).tokenizer
        assert tokenizer is not None  # start() refuses a model without one
        return tokenizer

    async def _generate(self, request: GenerationRequest, *, warm_up: bool = False) -> AsyncGenerator[TextEvent, None]:
        check_request(request, self._capabilities)
        llm = self._running(warm_up)
        if request.constraint is not None:
            assert self._checker is not None  # check_request refused every constraint without a backend
            await self._checker.check(request.constraint)
        prompt_ids = await self._prompt_ids(llm, request.prompt)
        self._policy.check_length(len(prompt_ids), request.max_tokens)
        params = self._sampling_params(request)
        submitted = time.perf_counter()
        result = self._submit(llm, prompt_ids, params, request)
        stream = _Stream(result)
        self._in_flight[result] = stream
        self._active = len(self._in_flight)
        self._drained.clear()
        deltas = Deltas(request.stop, request.top_logprobs)
        first_output: float | None = None
        ended = False  # TensorRT-LLM finished the request itself: nothing to abort
        try:
            while True:
                if self._death is not None:
                    raise self._dead_error()
                task = stream.waiting = asyncio.current_task()  # each pass: another task may drive the stream
                try:
                    output = await anext(result)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if stream.killed and task is not None and task.uncancel() <= stream.cancelling:
                        raise self._dead_error() from None  # `_die` interrupted the wait: nothing more will come
                    raise
                finally:
                    stream.waiting = None
                if first_output is None:
                    first_output = time.perf_counter() - submitted
                completion = output.outputs[0]
                delta, matched = deltas.step(completion, final=output.finished)
                if delta is not None:
                    yield delta
                if matched is None and not output.finished:
                    continue
                ended = output.finished
                reason = FinishReason.STOP_SEQUENCE if matched is not None else self._finish_reason(completion)
                usage = Usage(
                    input_tokens=len(prompt_ids),
                    output_tokens=deltas.sent_ids,
                    # GenerationResultBase.cached_tokens: prompt tokens served from reused KV blocks
                    cached_input_tokens=result.cached_tokens,
                )
                timings = engine_timings(completion)
                # Our own stop match aborts a request TensorRT-LLM has not finished; `active` drops before the finish
                self._release(result, abort=not ended)
                if timings is None:  # no perf metrics: submission to the first output, TensorRT-LLM's queue included
                    yield EngineFinished(reason, usage, matched or "", first_output_seconds=first_output)
                else:
                    queue, prefill = timings
                    yield EngineFinished(reason, usage, matched or "", prefill, queue)
                return
            ended = True
            raise Internal(
                "TensorRT-LLM ended the stream before the request finished", reason=Reason.ENGINE_STREAM_ENDED
            )
        except RilletError:
            raise
        except Exception as exc:  # RequestError (a failed request), a dead worker's error, or a fault while folding
            dead = self._fatal(llm, exc)
            if dead is not None:
                raise dead from exc
            ended = isinstance(exc, self._api.request_error)
            log.warning("trtllm: request %s failed: %r", request.request_id, exc)
            raise Internal(f"TensorRT-LLM failed the request: {exc}", reason=Reason.ENGINE_REQUEST_FAILED) from exc
        finally:
            # The one exit of every stream: finished, failed, closed by the client, cancelled by the deadline or a
            # disconnect (GeneratorExit or CancelledError at a yield above). Aborting frees the slot and KV now.
            self._release(result, abort=not ended and self._death is None)

    def _running(self, warm_up: bool) -> LLM:
        """The LLM a new stream runs on, or why none may run now (one reason per lifecycle state)."""
        if warm_up and self.state is State.STARTING and self._llm is not None:
            return self._llm
        if self._death is not None:
            raise self._dead_error()
        self.check_serving()
        assert self._llm is not None  # SERVING: loaded, and not yet closed
        return self._llm

    async def _watch(self) -> None:
        """While streams are in flight, ask TensorRT-LLM whether its executor still lives (see the class docstring)."""
        while self._death is None:
            await asyncio.sleep(HEALTH_POLL_SECONDS)
            llm = self._llm
            if self._in_flight and llm is not None:
                failure = executor_failure(llm)
                if failure is not None:
                    self._die(failure)

    def _die(self, failure: str) -> None:
        """The executor can serve nothing more: stay unhealthy, and fail every stream in flight with EngineDead now.

        A stream waiting on TensorRT-LLM (which will never answer) is interrupted there, as `asyncio.timeout` does:
        its task is cancelled and the stream turns that one cancellation into EngineDead. A stream whose consumer is
        elsewhere (reading slowly) sees `_death` at its next step.
        """
        if self._death is not None:
            return
        log.error("trtllm: %s; every request in flight fails, and the server stops", failure)
        self._death = failure
        self._mark_dead()
        for stream in self._in_flight.values():
            task = stream.waiting
            if task is not None and not stream.killed:
                stream.killed = True
                stream.cancelling = task.cancelling()
                task.cancel()

    def _dead_error(self) -> EngineDead:
        return dead_error(ENGINE_NAME, f"can serve no more: its executor has stopped ({self._death})")

    def _fatal(self, llm: LLM, exc: BaseException) -> EngineDead | None:
        """EngineDead when `exc` came with the executor's death, else None.

        1.2.1's proxy raises a dead worker's queued error, of whatever type, from the next `submit` or from the fold
        of a response already on its way, shutting the executor down first: `executor_failure` then says so.
        """
        if self._death is None:
            if executor_failure(llm) is None:
                return None
            self._die(f"TensorRT-LLM's executor failed: {exc!r}")
        return self._dead_error()

    async def _prompt_ids(self, llm: LLM, prompt: Prompt) -> list[int]:
        """The prompt's token ids (`_encode`): off the loop for a chat template or a long text, on it otherwise."""
        tokenizer = llm.tokenizer
        assert tokenizer is not None  # start() refuses a model without one
        if isinstance(prompt, str):
            quick = len(prompt) <= LONG_PROMPT_CHARS
        else:
            quick = bool(prompt) and isinstance(prompt[0], int)
        if quick:  # a short text, or token ids: cheaper than the thread hop
            return self._encode(tokenizer, prompt)
        return await asyncio.to_thread(self._encode, tokenizer, prompt)

    def _encode(self, tokenizer: TokenizerBase, prompt: Prompt) -> list[int]:
        """The ids generation reads a prompt as: text with special tokens, ids checked, chat through the template.

        Generation and Tokenize both come here, so a count agrees with `usage.input_tokens`. It may block (the chat
        template, a long text): the caller picks the thread.
        """
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=True)
        elif prompt and isinstance(prompt[0], int):
            ids = [int(t) for t in prompt if isinstance(t, int)]
            self._policy.check_ids(ids)  # an id past the embedding table is a device-side fault on the GPU
        else:
            messages = [{"role": m.role, "content": m.content} for m in prompt if isinstance(m, ChatMessage)]
            try:
                encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            except ValueError as exc:  # Hugging Face's answer when the tokenizer has no chat template
                raise InvalidArgument(str(exc), field="params.chat", reason=Reason.CHAT_TEMPLATE_MISSING) from None
            except self._api.template_error as exc:  # a template that refuses these turns or roles
                raise InvalidArgument(str(exc), field="params.chat", reason=Reason.CHAT_TEMPLATE_UNSUPPORTED) from None
            ids = list(encoded)
        self._policy.check_not_empty(len(ids))
        return ids

    def _sampling_params(self, request: GenerationRequest) -> TrtSamplingParams:
        """TensorRT-LLM's SamplingParams for the request; a ValueError from its checks is INVALID_ARGUMENT.

        Only fields the sampler honours can differ from their no-op values here (`check_request` refused the rest).
        """
        sampling = request.sampling
        greedy = sampling.temperature < GREEDY_BELOW_TEMPERATURE
        options: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": 0.0 if greedy else sampling.temperature,
            "detokenize": True,
            "skip_special_tokens": True,
        }
        if not greedy:
            options["top_p"] = sampling.top_p
            options["top_k"] = sampling.top_k  # 0 means every token, in TensorRT-LLM as in Rillet
            if self._config.sampler is TrtllmSampler.TRTLLM:  # its default seed is fixed: unseeded must differ
                options["seed"] = secrets.randbelow(1 << 63) if sampling.seed is None else sampling.seed
            if sampling.min_p > 0:
                options["min_p"] = sampling.min_p
        if sampling.repetition_penalty != 1.0:
            options["repetition_penalty"] = sampling.repetition_penalty
        if request.top_logprobs is not None:
            options["logprobs"] = max(1, request.top_logprobs)  # 0 would mean none: ask for one, report the token's
        if request.constraint is not None:
            options["guided_decoding"] = self._api.guided_decoding_params(**guide(request.constraint))
        try:
            return self._api.sampling_params(**options)
        except ValueError as exc:
            raise InvalidArgument(
                f"TensorRT-LLM refused the sampling parameters: {exc}",
                field="params.sampling",
                reason=Reason.REQUEST_REJECTED,
            ) from None

    def _submit(
        self, llm: LLM, prompt_ids: list[int], params: TrtSamplingParams, request: GenerationRequest
    ) -> RequestOutput:
        try:
            return llm.generate_async(
                inputs=prompt_ids,
                sampling_params=params,
                streaming=True,
                trace_headers=trace_headers(request.trace),
                cache_salt=request.cache_scope or None,  # KV blocks are reused only under the same salt
            )
        except Exception as exc:
            if self.state is State.CLOSED:
                raise closed_error(ENGINE_NAME) from None
            dead = self._fatal(llm, exc)  # "LLM is shutting down", or a dead worker's queued error of any type
            if dead is not None:
                raise dead from exc
            if isinstance(exc, (self._api.request_error, ValueError)):  # TensorRT-LLM's own argument checks
                raise InvalidArgument(
                    f"TensorRT-LLM refused the request: {exc}", reason=Reason.REQUEST_REJECTED
                ) from None
            raise Internal(
                f"TensorRT-LLM could not take the request: {exc}", reason=Reason.ENGINE_REQUEST_FAILED
            ) from exc

    @staticmethod
    def _finish_reason(completion: CompletionOutput) -> FinishReason:
        reason = completion.finish_reason
        if reason == "length":
            return FinishReason.LENGTH
        if reason == "stop":  # the end token, or a stop token id from the model's generation config
            return FinishReason.STOP
        if reason == "cancelled":
            return FinishReason.CANCELLED
        if reason == "timeout":
            raise DeadlineExceeded("TensorRT-LLM's own time limit for the request passed", reason=Reason.ENGINE_TIMEOUT)
        raise Internal(f"TensorRT-LLM finished the request without a known finish reason ({reason!r})")

    def _release(self, result: RequestOutput, *, abort: bool) -> None:
        """Forget a request (idempotent); abort it in TensorRT-LLM first unless TensorRT-LLM ended it.

        `active` counts the requests submitted to TensorRT-LLM and not yet released (`_in_flight`).
        """
        if self._in_flight.pop(result, None) is not None:
            self._active = len(self._in_flight)
            if abort:
                self._abort(result)
            if not self._in_flight:
                self._drained.set()

    @staticmethod
    def _abort(result: RequestOutput) -> None:
        try:
            result.abort()
        except Exception:  # best effort: a failed abort must not mask why the stream ended
            log.exception("trtllm: abort failed")


def _vocabulary(llm: LLM, tokenizer: Any) -> int:
    """Token ids a prompt may hold: the tokenizer's, bounded by the model's embedding rows where those are fewer.

    `len(tokenizer)` counts added tokens a checkpoint may have no embedding for; the model's `config.json`
    `vocab_size` (`BaseLLM._hf_model_config`) is what the embedding lookup on the GPU bounds.
    """
    size = len(getattr(tokenizer, "tokenizer", tokenizer))  # TransformersTokenizer wraps Hugging Face's
    rows = getattr(getattr(llm, "_hf_model_config", None), "vocab_size", None)
    return min(size, rows) if isinstance(rows, int) and rows > 0 else size


async def _shut_down(llm: LLM) -> None:
    """`llm.shutdown()` off the loop, waited on for at most SHUTDOWN_SECONDS.

    It runs in a daemon thread: after a worker's death TensorRT-LLM's shutdown can wait on its IPC forever, and the
    process must still be able to exit (a thread of the default executor would be joined at exit).
    """
    finished = threading.Event()

    def shut_down() -> None:
        try:
            llm.shutdown()
        except Exception as exc:  # a dead worker's error is raised once more here
            log.warning("trtllm: TensorRT-LLM's shutdown raised %r", exc)
        finally:
            finished.set()

    threading.Thread(target=shut_down, name="trtllm-shutdown", daemon=True).start()
    if not await asyncio.to_thread(finished.wait, SHUTDOWN_SECONDS):
        log.warning("trtllm: TensorRT-LLM did not shut down within %.0fs; leaving it behind", SHUTDOWN_SECONDS)
