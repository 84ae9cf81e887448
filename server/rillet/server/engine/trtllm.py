"""The trtllm engine: TensorRT-LLM's LLM API on NVIDIA GPUs (PyTorch backend, in-flight batching inside it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

from rillet.server.config import TrtllmConfig
from rillet.server.engine.base import TextEvent
from rillet.server.engine.text import StopMatcher, check_request
from rillet.server.errors import DeadlineExceeded, EngineDead, Internal, InvalidArgument, RilletError, Unavailable
from rillet.server.types import (
    GREEDY_BELOW_TEMPERATURE,
    ChatMessage,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Prompt,
    TextCapabilities,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)

if TYPE_CHECKING:  # the package is imported lazily: CPU installs never need it
    from tensorrt_llm import LLM
    from tensorrt_llm.executor.result import CompletionOutput
    from tensorrt_llm.llmapi.llm import RequestOutput
    from tensorrt_llm.sampling_params import SamplingParams

log = logging.getLogger(__name__)

ENGINE_NAME = "trtllm"
CONTAINER = "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
INSTALL_HELP = (
    "The trtllm engine runs TensorRT-LLM 1.2 on NVIDIA GPUs (Linux x86_64 with CUDA). Install it with "
    '`pip install --extra-index-url https://pypi.nvidia.com "rillet[trtllm]"` (NVIDIA publishes the wheels on its '
    'own index, pypi.nvidia.com; the "tensorrt-llm" name on PyPI only points there), or run Rillet in NVIDIA\'s '
    f"TensorRT-LLM release container {CONTAINER}, which has it: deploy/gpu/ builds that image and covers one GPU, "
    "several GPUs and several nodes. Without a GPU, serve the CPU engine instead: --text-engine llamacpp."
)
"""The paragraph `rillet serve --text-engine trtllm` prints when the engine cannot run here."""

CAPABILITIES = TextCapabilities(reproducible_seed=True)
"""What the engine honours: every sampling field, a reproducible seed and logprobs."""

MIN_LOGPROB = -9999.0
"""Floor for a logprob: TensorRT-LLM reports masked tokens as -inf (its servers clamp the same way)."""

LONG_PROMPT_CHARS = 4096
"""Prompts longer than this are tokenized in a worker thread; a short one costs less than the thread hop."""

CLOSE_GRACE_SECONDS = 5.0
"""How long `aclose` lets aborted streams receive their CANCELLED finish before the executor shuts down."""

_SHUTTING_DOWN = "LLM is shutting down"
"""The RuntimeError message `LLM.generate_async` raises once the executor is gone."""


@dataclass(frozen=True, slots=True)
class _Api:
    """The TensorRT-LLM names the engine uses, imported once when the engine is built."""

    version: str
    llm: type[LLM]
    sampling_params: type[SamplingParams]
    request_error: type[Exception]
    kv_cache_config: Callable[..., Any]
    scheduler_config: Callable[..., Any]
    capacity_policy: Callable[[str], Any]
    llm_fields: frozenset[str]
    device_count: Callable[[], int]


def _import_api() -> _Api:
    """Import TensorRT-LLM, or fail with the install paragraph (EngineDead: the server cannot start)."""
    try:
        import tensorrt_llm
        from tensorrt_llm.executor.utils import RequestError
        from tensorrt_llm.llmapi import CapacitySchedulerPolicy, KvCacheConfig, SchedulerConfig
        from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
        from tensorrt_llm.llmapi.utils import get_device_count
    except Exception as exc:  # ImportError, or the OSError/RuntimeError of a broken CUDA install
        raise EngineDead(f"{INSTALL_HELP} (import tensorrt_llm failed: {exc})", reason="ENGINE_UNAVAILABLE") from exc
    return _Api(
        version=tensorrt_llm.__version__,
        llm=tensorrt_llm.LLM,
        sampling_params=tensorrt_llm.SamplingParams,
        request_error=RequestError,
        kv_cache_config=KvCacheConfig,
        scheduler_config=SchedulerConfig,
        capacity_policy=CapacitySchedulerPolicy,
        llm_fields=frozenset(TorchLlmArgs.model_fields),
        device_count=get_device_count,
    )


TYPED_LLM_ARGS = frozenset(
    {
        "model",
        "tokenizer",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "kv_cache_config",
        "scheduler_config",
        "enable_chunked_prefill",
        "skip_tokenizer_init",
        "backend",
    }
)
"""LLM keywords the typed config (or the engine itself) sets; `extra_llm_args` may not set them again."""


def llm_kwargs(config: TrtllmConfig, api: _Api) -> dict[str, Any]:
    """The keywords for `LLM(...)`: the typed settings, then `extra_llm_args` checked against TorchLlmArgs.

    Unknown keys fail here, at startup, naming the key (TensorRT-LLM would raise the same ValueError later, after
    importing CUDA); a key the typed settings own fails too, so one knob has one place.
    """
    unknown = sorted(set(config.extra_llm_args) - api.llm_fields)
    if unknown:
        raise EngineDead(
            f"trtllm.extra_llm_args has keys TensorRT-LLM {api.version}'s LLM does not take: {', '.join(unknown)} "
            "(see TorchLlmArgs in its LLM API reference)",
            reason="ENGINE_CONFIG_INVALID",
        )
    owned = sorted(set(config.extra_llm_args) & TYPED_LLM_ARGS)
    if owned:
        raise EngineDead(
            f"trtllm.extra_llm_args sets {', '.join(owned)}, which the trtllm settings own: set trtllm.<field> instead",
            reason="ENGINE_CONFIG_INVALID",
        )
    kwargs: dict[str, Any] = {
        "model": config.model,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "max_batch_size": config.max_batch_size,
        "max_num_tokens": config.max_num_tokens,
        "max_seq_len": config.max_seq_len,
        "enable_chunked_prefill": config.enable_chunked_prefill,
        "kv_cache_config": api.kv_cache_config(
            free_gpu_memory_fraction=config.free_gpu_memory_fraction, enable_block_reuse=config.enable_block_reuse
        ),
        "scheduler_config": api.scheduler_config(
            capacity_scheduler_policy=api.capacity_policy(config.capacity_scheduler_policy.value)
        ),
    }
    if config.tokenizer is not None:
        kwargs["tokenizer"] = config.tokenizer
    return kwargs | config.extra_llm_args


def served_name(config: TrtllmConfig) -> str:
    """The model name clients use: `model_name`, else the model id's or directory's last component."""
    return config.model_name or PurePath(config.model.rstrip("/")).name or config.model


def clamp_logprob(value: float) -> float:
    return max(float(value), MIN_LOGPROB)


def token_logprobs(
    token_ids: Sequence[int], logprobs: Sequence[Any], start: int, end: int, top: int
) -> tuple[TokenLogprobs, ...]:
    """Rillet's logprobs for `token_ids[start:end]` from either shape TensorRT-LLM returns, aligned by position.

    `logprobs` is cumulative and parallel to `token_ids`: per token a float (the sampled token's logprob), or a dict
    token id -> Logprob(logprob, rank) holding the top candidates (and the sampled token). When the list is shorter
    than the tokens (a generation-only request misses the first token's), the missing ones come first and get none.
    """
    shortfall = max(0, len(token_ids) - len(logprobs))
    out: list[TokenLogprobs] = []
    for i in range(max(start, shortfall), end):
        token = token_ids[i]
        entry = logprobs[i - shortfall]
        if isinstance(entry, dict):
            sampled = entry.get(token)
            value = sampled.logprob if sampled is not None else -math.inf
            ranked = sorted((e for e in entry.items() if e[1].rank is not None), key=lambda e: e[1].rank)
            alternatives = tuple(TokenLogprob(t, clamp_logprob(lp.logprob)) for t, lp in ranked[:top])
            out.append(TokenLogprobs(TokenLogprob(token, clamp_logprob(value)), alternatives))
        else:
            out.append(TokenLogprobs(TokenLogprob(token, clamp_logprob(entry))))
    return tuple(out)


class _Deltas:
    """Turns one request's cumulative outputs into deltas.

    Invariants: `sent_ids` token ids have been emitted, and they are a prefix of the engine's `token_ids` (which only
    grow: Rillet passes no stop words to TensorRT-LLM, so nothing truncates them); the text fed to the StopMatcher is
    a prefix of the engine's `text` (append-only: its incremental detokenizer holds back incomplete UTF-8), and what
    the matcher still holds is the only fed text not yet emitted. `token_ids_diff`/`text_diff` are never read: with
    more than one output they are stale (TensorRT-LLM's own gRPC servers compute deltas the same way).
    """

    def __init__(self, stop: Sequence[str], top_logprobs: int | None) -> None:
        self._stops = StopMatcher(stop)
        self._top = top_logprobs
        self.sent_ids = 0
        self._fed_chars = 0

    def step(self, output: CompletionOutput, final: bool) -> tuple[TokenDelta | None, str | None]:
        """The delta this output adds (None when nothing is new) and the stop string matched, if any."""
        token_ids = output.token_ids
        end = len(token_ids)
        new_ids = tuple(token_ids[self.sent_ids : end])
        logprobs: tuple[TokenLogprobs, ...] = ()
        if self._top is not None and new_ids:
            logprobs = token_logprobs(token_ids, output.logprobs, self.sent_ids, end, self._top)
        self.sent_ids = max(self.sent_ids, end)
        text = output.text
        check = self._stops.feed(text[self._fed_chars :])
        self._fed_chars = max(self._fed_chars, len(text))
        emit = check.emit
        if final and check.matched is None:
            emit += self._stops.flush()
        delta = TokenDelta(emit, new_ids, logprobs) if emit or new_ids else None
        return delta, check.matched


class TrtllmEngine:
    """Text generation on TensorRT-LLM's LLM API (PyTorch backend) with in-flight batching on NVIDIA GPUs.

    TensorRT-LLM owns the batching: up to `max_batch_size` sequences in flight, `max_num_tokens` per executor step,
    prompts chunked across steps; Rillet admits at most `slots` (= max_batch_size) streams, so the rest wait in
    Rillet's own admission queue. Each stream is one `generate_async(..., streaming=True)` iterated with `async for`
    on the event loop (results arrive from TensorRT-LLM's executor threads; the GPU work is never on the loop).

    Stream contract specifics: prompts are tokenized here (text, token ids checked against the vocabulary, chat
    through the model's template), so their length is known before submission; stop strings are matched here on
    TensorRT-LLM's cumulative text and the request is aborted at the first match (TensorRT-LLM's own stop words
    truncate token ids and can leave a stop word's prefix in the text); the ids of all deltas together number
    `usage.output_tokens`. Cancel, disconnect and deadline all close the stream, and the stream's `finally` aborts
    the request then (never a poll). `prefill_seconds` runs from submission to the first output, TensorRT-LLM's own
    queueing included (`engine_queue_seconds` stays 0: it is not observable without perf metrics).
    """

    def __init__(self, config: TrtllmConfig) -> None:
        """Check that TensorRT-LLM, enough GPUs and a model are there; raises EngineDead with what to do otherwise."""
        self._config = config
        self._api = _import_api()
        need = config.tensor_parallel_size * config.pipeline_parallel_size
        devices = self._api.device_count()
        if devices < need:
            found = "no CUDA GPU is visible" if devices == 0 else f"only {devices} CUDA GPUs are visible"
            raise EngineDead(
                f"{found}, and tensor_parallel_size * pipeline_parallel_size = {need} are needed. {INSTALL_HELP}",
                reason="ENGINE_UNAVAILABLE",
            )
        if not config.model:
            raise EngineDead(
                "the trtllm engine needs a model: set trtllm.model (RILLET_TRTLLM__MODEL) to a Hugging Face model id "
                "or a local checkpoint directory",
                reason="ENGINE_CONFIG_INVALID",
            )
        self._kwargs = llm_kwargs(config, self._api)
        self._llm: LLM | None = None
        self._vocab_size = 0
        self._in_flight: set[RequestOutput] = set()
        self._drained = asyncio.Event()  # set whenever nothing is in flight
        self._dead = False
        self._closed = False
        self._models = (self._model_info(supports_chat=False),)

    def _model_info(self, supports_chat: bool) -> ModelInfo:
        config = self._config
        layout = f"{config.tensor_parallel_size} GPU tensor parallel, {config.pipeline_parallel_size} pipeline stages"
        return ModelInfo(
            name=served_name(config),
            kind=ModelKind.TEXT_GENERATION,
            engine=ENGINE_NAME,
            description=f"{config.model} on TensorRT-LLM {self._api.version} (PyTorch backend, in-flight batching; "
            f"{layout})",
            context_length=config.max_seq_len,
            supports_chat=supports_chat,
            max_tokens_limit=config.max_seq_len - 1,
            capabilities=CAPABILITIES,
        )

    @property
    def name(self) -> str:
        return ENGINE_NAME

    @property
    def serves(self) -> Literal[ModelKind.TEXT_GENERATION]:
        return ModelKind.TEXT_GENERATION

    @property
    def models(self) -> Sequence[ModelInfo]:
        return self._models

    @property
    def slots(self) -> int:
        return self._config.max_batch_size

    @property
    def active(self) -> int:
        """Requests submitted to TensorRT-LLM and not yet finished or aborted."""
        return len(self._in_flight)

    def healthy(self) -> bool:
        return not (self._dead or self._closed)

    async def start(self) -> None:
        """Load the model (TensorRT-LLM starts its executor), then warm up; EngineDead when either fails."""
        if self._llm is not None:
            raise RuntimeError("the trtllm engine was already started")
        try:
            llm = await asyncio.to_thread(self._api.llm, **self._kwargs)  # minutes for a large model: off the loop
        except Exception as exc:
            self._dead = True
            raise EngineDead(
                f"TensorRT-LLM could not load {self._config.model!r}: {exc}", reason="ENGINE_START_FAILED"
            ) from exc
        self._llm = llm
        tokenizer = llm.tokenizer
        if tokenizer is None:
            await self.aclose()
            raise EngineDead("the trtllm engine needs the model's tokenizer (skip_tokenizer_init is not supported)")
        wrapped: Any = getattr(tokenizer, "tokenizer", tokenizer)  # TransformersTokenizer wraps Hugging Face's
        self._vocab_size = len(wrapped)
        try:
            tokenizer.get_chat_template()
            supports_chat = True
        except ValueError:  # Hugging Face's answer when the model has no chat template
            supports_chat = False
        self._models = (self._model_info(supports_chat),)
        try:
            await self._warm_up()
        except RilletError as exc:
            await self.aclose()
            self._dead = True
            raise EngineDead(f"the trtllm engine failed its warm-up request: {exc.message}") from exc

    async def _warm_up(self) -> None:
        """One short greedy generation through the whole path (CUDA graphs, sampler, detokenizer) before SERVING."""
        request = GenerationRequest("trtllm-warm-up", self._models[0].name, "Hello", 2)
        async for _ in self._generate(request):
            pass

    async def aclose(self) -> None:
        """Abort what is in flight (those streams end CANCELLED) and release the executor and its GPU memory."""
        self._closed = True
        for result in list(self._in_flight):
            self._abort(result)  # each stream then reads its CANCELLED finish and releases itself
        if self._in_flight:  # let the executor deliver those finishes before it goes (bounded: it may be stuck)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), CLOSE_GRACE_SECONDS)
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        check_request(request, CAPABILITIES)
        llm = self._running()
        prompt_ids = await self._prompt_ids(llm, request.prompt)
        self._check_length(len(prompt_ids), request.max_tokens)
        params = self._sampling_params(request)
        submitted = time.perf_counter()
        result = self._submit(llm, prompt_ids, params)
        self._in_flight.add(result)
        self._drained.clear()
        deltas = _Deltas(request.stop, request.top_logprobs)
        prefill: float | None = None
        ended = False  # TensorRT-LLM finished the request itself: nothing to abort
        try:
            async for output in result:
                if prefill is None:
                    prefill = time.perf_counter() - submitted
                completion = output.outputs[0]
                delta, matched = deltas.step(completion, final=output.finished)
                if delta is not None:
                    yield delta
                if matched is None and not output.finished:
                    continue
                usage = Usage(
                    input_tokens=len(prompt_ids),
                    output_tokens=deltas.sent_ids,
                    # GenerationResultBase.cached_tokens: prompt tokens served from reused KV blocks
                    cached_input_tokens=result.cached_tokens,
                )
                if matched is not None:  # our match, not TensorRT-LLM's: abort it before reporting the finish
                    self._release(result, abort=True)
                    yield EngineFinished(FinishReason.STOP_SEQUENCE, usage, matched, prefill)
                    return
                if output.finished:
                    ended = True
                    reason = self._finish_reason(completion)
                    self._release(result, abort=False)  # `active` drops before the finish is seen
                    yield EngineFinished(reason, usage, prefill_seconds=prefill)
                    return
            ended = True
            raise Internal("TensorRT-LLM ended the stream before the request finished", reason="ENGINE_STREAM_ENDED")
        except RilletError:
            raise
        except Exception as exc:  # RequestError (a failed request) or a fault while folding a response
            ended = isinstance(exc, self._api.request_error)
            log.warning("trtllm: request %s failed: %r", request.request_id, exc)
            raise Internal(f"TensorRT-LLM failed the request: {exc}", reason="ENGINE_REQUEST_FAILED") from exc
        finally:
            # The one exit of every stream: finished, failed, closed by the client, cancelled by the deadline or a
            # disconnect (GeneratorExit or CancelledError at a yield above). Aborting frees the slot and KV now.
            self._release(result, abort=not ended)

    def _running(self) -> LLM:
        if self._closed:
            raise Unavailable("the trtllm engine is closed", reason="ENGINE_CLOSED")
        if self._dead:
            raise EngineDead("the trtllm engine's executor has stopped")
        if self._llm is None:
            raise Unavailable("the trtllm engine is not started", reason="WARMING_UP")
        return self._llm

    async def _prompt_ids(self, llm: LLM, prompt: Prompt) -> list[int]:
        """The prompt's token ids: text tokenized with special tokens, ids checked, chat through the template."""
        tokenizer = llm.tokenizer
        assert tokenizer is not None  # start() refuses a model without one
        if isinstance(prompt, str):
            if len(prompt) > LONG_PROMPT_CHARS:
                ids = await asyncio.to_thread(tokenizer.encode, prompt, add_special_tokens=True)
            else:
                ids = tokenizer.encode(prompt, add_special_tokens=True)
        elif prompt and isinstance(prompt[0], int):
            ids = [int(t) for t in prompt if isinstance(t, int)]
            bad = next((t for t in ids if not 0 <= t < self._vocab_size), None)
            if bad is not None:  # an id past the embedding table is a device-side fault on the GPU: refuse it here
                raise InvalidArgument(
                    f"token id {bad} is outside the vocabulary (0..{self._vocab_size - 1})",
                    field="params.token_ids",
                    reason="TOKEN_ID_OUT_OF_RANGE",
                )
        else:
            messages = [{"role": m.role, "content": m.content} for m in prompt if isinstance(m, ChatMessage)]
            try:
                encoded = await asyncio.to_thread(
                    tokenizer.apply_chat_template, messages, tokenize=True, add_generation_prompt=True
                )
            except ValueError as exc:  # no template, or one that refuses these roles
                raise InvalidArgument(str(exc), field="params.chat", reason="CHAT_TEMPLATE_UNSUPPORTED") from None
            ids = list(encoded)
        if not ids:
            raise InvalidArgument("the prompt has no tokens", field="params.prompt", reason="EMPTY_PROMPT")
        return ids

    def _check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        limit = self._config.max_seq_len
        if prompt_tokens + max_tokens > limit:
            raise InvalidArgument(
                f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds max_seq_len {limit}",
                field="params.prompt",
                reason="PROMPT_TOO_LONG",
                metadata={"prompt_tokens": str(prompt_tokens), "context_length": str(limit)},
            )
        if not self._config.enable_chunked_prefill and prompt_tokens > self._config.max_num_tokens:
            raise InvalidArgument(
                f"prompt of {prompt_tokens} tokens exceeds max_num_tokens {self._config.max_num_tokens} "
                "(chunked prefill is off)",
                field="params.prompt",
                reason="PROMPT_TOO_LONG",
                metadata={"prompt_tokens": str(prompt_tokens), "max_num_tokens": str(self._config.max_num_tokens)},
            )

    def _sampling_params(self, request: GenerationRequest) -> SamplingParams:
        """TensorRT-LLM's SamplingParams for the request; a ValueError from its checks is INVALID_ARGUMENT."""
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
            options["seed"] = secrets.randbelow(1 << 63) if sampling.seed is None else sampling.seed
            if sampling.min_p > 0:
                options["min_p"] = sampling.min_p
        if sampling.repetition_penalty != 1.0:
            options["repetition_penalty"] = sampling.repetition_penalty
        if request.top_logprobs is not None:
            options["logprobs"] = max(1, request.top_logprobs)  # 0 would mean none: ask for one, report the token's
        try:
            return self._api.sampling_params(**options)
        except ValueError as exc:
            raise InvalidArgument(
                f"TensorRT-LLM refused the sampling parameters: {exc}",
                field="params.sampling",
                reason="SAMPLING_REJECTED",
            ) from None

    def _submit(self, llm: LLM, prompt_ids: list[int], params: SamplingParams) -> RequestOutput:
        try:
            return llm.generate_async(inputs=prompt_ids, sampling_params=params, streaming=True)
        except self._api.request_error as exc:  # on the PyTorch backend: a prompt over max_num_tokens
            raise InvalidArgument(str(exc), field="params.prompt", reason="PROMPT_TOO_LONG") from None
        except ValueError as exc:
            raise InvalidArgument(f"TensorRT-LLM refused the request: {exc}", reason="REQUEST_REJECTED") from None
        except RuntimeError as exc:
            if _SHUTTING_DOWN not in str(exc):
                raise Internal(f"TensorRT-LLM could not take the request: {exc}") from exc
            if self._closed:
                raise Unavailable("the trtllm engine is closed", reason="ENGINE_CLOSED") from None
            self._dead = True  # the executor went away on its own: nothing more can be served
            raise EngineDead(f"the trtllm engine's executor has stopped: {exc}") from exc

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
            raise DeadlineExceeded("TensorRT-LLM's own time limit for the request passed", reason="ENGINE_TIMEOUT")
        raise Internal(f"TensorRT-LLM finished the request without a known finish reason ({reason!r})")

    def _release(self, result: RequestOutput, *, abort: bool) -> None:
        """Forget a request (idempotent); abort it in TensorRT-LLM first unless TensorRT-LLM ended it."""
        if result in self._in_flight:
            self._in_flight.discard(result)
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
