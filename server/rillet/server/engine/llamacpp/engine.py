"""The llamacpp engine: the TextEngine seam over the engine thread (start, streams, close, death)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Literal

from rillet.server.config import LlamaCppConfig
from rillet.server.engine.base import TextEvent
from rillet.server.engine.constraints import Compiler, enforceable
from rillet.server.engine.lifecycle import EngineLifecycle, closed_error, dead_error, not_started_error
from rillet.server.engine.llamacpp.guide import Guide
from rillet.server.engine.llamacpp.handoff import Mailbox, Sink, SubmittedSequence
from rillet.server.engine.llamacpp.model import Loaded, LoadedModel
from rillet.server.engine.llamacpp.settings import context_limit, resolve_model_name, resolve_slots
from rillet.server.engine.llamacpp.worker import Worker
from rillet.server.engine.text import TextDecoder, check_request
from rillet.server.errors import EngineDead, RilletError
from rillet.server.observer import StepReporter
from rillet.server.reasons import Reason
from rillet.server.types import (
    ChatMessage,
    EngineFinished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    TextCapabilities,
)

__all__ = ["CAPABILITIES", "ENGINE_NAME", "LlamaCppEngine", "capabilities"]

log = logging.getLogger(__name__)

ENGINE_NAME = "llamacpp"
CAPABILITIES = TextCapabilities(reproducible_seed=True)
"""Every sampling field and logprobs; a seeded request repeats run alone (a batch's layout changes the numerics).
Output constraints are added where llguidance is installed (`capabilities`)."""


def capabilities() -> TextCapabilities:
    """CAPABILITIES, with every constraint kind where llguidance is installed (the cpu extra has it)."""
    return dataclasses.replace(CAPABILITIES, constraints=enforceable())


def _closed_error() -> RilletError:
    return closed_error(ENGINE_NAME)


def _not_started_error() -> RilletError:
    return not_started_error(ENGINE_NAME)


class LlamaCppEngine(EngineLifecycle):
    """Text generation on llama.cpp (CPU) with continuous batching over `slots` sequences (`resolve_slots`).

    One engine thread owns the model and context and runs the step loop (`worker.Worker`); the event loop only submits
    sequences, marks them cancelled, and receives their items through `call_soon_threadsafe`. Prompts are tokenized
    and validated on the engine thread, so errors arrive before any output. Requests beyond the free slots (or KV
    room for their prompt) wait inside the engine in arrival order; KV cells are taken per token, and when the cache
    is full, cached prefixes are evicted first, then the newest request is preempted and later resumed (see
    `planner.KvPlanner`). With kv_unified, a prompt that starts like an earlier or running one shares that prefix's
    KV cells instead of computing them (`usage.cached_input_tokens`). `start` warms every path a request takes
    before it returns.

    The mailbox, not the lifecycle's state, decides whether a stream is taken (handoff.Mailbox: one lock with the
    engine thread); its refusals are the lifecycle's, one reason per condition.

    Stream contract specifics: each TokenDelta carries the ids of the tokens it covers (a stop string's text is
    never sent; an end-of-generation token is neither sent nor counted), so the ids of all deltas together number
    `usage.output_tokens`. `engine_queue_seconds` runs from `stream` to the first scheduled prefill;
    `prefill_seconds` from there to the first sampled token. Logprobs are the raw model distribution (log-softmax of
    the logits before temperature, filters and a constraint's mask). Temperatures below GREEDY_BELOW_TEMPERATURE
    decode greedily.

    Output constraints (where llguidance is installed): each request's constraint is compiled in `stream`, off the
    event loop, before submission (`constraints.Compiler` over llguidance's tokenizer of the model's own vocabulary,
    built at `start`; cached by the constraint's text, so a repeated schema compiles once), so a bad one fails
    INVALID_ARGUMENT before any output; the engine thread then masks that sequence's logits each step
    (`guide.Guide`). Its output is a string the constraint accepts (STOP), or a prefix of one (LENGTH, or
    STOP_SEQUENCE at a stop string).
    """

    def __init__(self, config: LlamaCppConfig) -> None:
        self._capabilities = capabilities()
        # models: the configured context and no chat until `start` reads the model
        info = self._model_info(config, context_limit(config), False, self._capabilities)
        super().__init__(ENGINE_NAME, (info,), resolve_slots(config))
        self._config = config
        self.compiler: Compiler | None = None  # constraints, compiled and cached (made at `start` where enforced)
        self._mailbox = Mailbox(_not_started_error)
        self._thread: threading.Thread | None = None
        self.step_reporter = StepReporter()  # observer.Batching: every step's batch size, for telemetry
        self._prompts: LoadedModel | None = None  # the engine thread's model, for Tokenize while it serves
        self._prompts_lock = threading.Lock()  # held by a Tokenize call and by the engine thread before freeing it
        self._kv_used = 0.0  # the engine thread's last word on KV cells in use (kv_cache_utilization)

    @staticmethod
    def _model_info(
        config: LlamaCppConfig, limit: int, supports_chat: bool, capabilities: TextCapabilities
    ) -> ModelInfo:
        if config.model_path is None:
            model = "Gemma 3 270M base model (Q4_K_M GGUF; completion prompts)"
        else:
            model = Path(config.model_path).name
        return ModelInfo(
            name=resolve_model_name(config),
            kind=ModelKind.TEXT_GENERATION,
            engine=ENGINE_NAME,
            description=f"{model} on llama.cpp (CPU, continuous batching)",
            context_length=limit,
            supports_chat=supports_chat,
            max_tokens_limit=limit - 1,
            capabilities=capabilities,
        )

    @property
    def serves(self) -> Literal[ModelKind.TEXT_GENERATION]:
        return ModelKind.TEXT_GENERATION

    async def start(self) -> None:
        """Load the model and start the engine thread; raises EngineDead if the model cannot be loaded."""
        self._mark_starting()
        ready: concurrent.futures.Future[Loaded] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="rillet-llamacpp", daemon=True)
        self._thread.start()
        try:
            loaded = await asyncio.wrap_future(ready)
        except Exception as exc:
            self._mark_dead()
            raise EngineDead(f"the llamacpp engine could not start: {exc}", reason=Reason.ENGINE_START_FAILED) from exc
        self._models = (self._model_info(self._config, loaded.context_limit, loaded.supports_chat, self._capabilities),)
        tokenizer = loaded.tokenizer
        if tokenizer is not None:
            self.compiler = Compiler(lambda: tokenizer)
        self._mark_serving()

    async def aclose(self) -> None:
        """Stop the engine thread: streams in flight end with Unavailable; the context and model are freed."""
        self._mark_closed()
        left = self._mailbox.close(_closed_error)
        for seq in left:  # submitted after the engine thread's last look at the inbox
            if seq.sink is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    seq.sink.loop.call_soon_threadsafe(seq.sink.queue.put_nowait, _closed_error())
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        check_request(request, self._capabilities)
        guide = None
        if request.constraint is not None:
            compiler = self.compiler
            if compiler is None:  # made once the engine is ready: until then the mailbox refuses every stream
                raise _not_started_error()
            guide = Guide(await compiler.matcher(request.constraint))
        sink = Sink(asyncio.get_running_loop())
        seq = SubmittedSequence(
            request, sink=sink, decoder=TextDecoder(request.stop), submitted_at=time.perf_counter(), guide=guide
        )
        self._mailbox.submit(seq)
        ended = False
        try:
            while True:
                for item in await sink.take():
                    if isinstance(item, RilletError):
                        ended = True
                        raise item
                    yield item
                    if isinstance(item, EngineFinished):
                        ended = True
                        return
        finally:
            if not ended:  # closed or cancelled mid-stream: the engine frees the slot at its next step
                self._mailbox.cancel(seq)

    def _set_active(self, count: int) -> None:
        self._active = count

    def _set_kv_used(self, share: float) -> None:
        self._kv_used = share

    def kv_cache_utilization(self) -> float:
        """base.KvCacheReporting: the share of KV cells running requests hold, as of the engine thread's last step.

        Cells kept only for the prefix cache are not counted: they are evicted before any request waits or is
        preempted, so to a router they are room (vLLM counts its cached, unreferenced blocks as free the same way).
        A float the engine thread writes and the event loop reads: no lock, never stale by more than one step.
        """
        return self._kv_used

    def tokenize(self, model: str, prompt: str | tuple[ChatMessage, ...]) -> list[int]:
        """base.Tokenizing: the ids generation reads `prompt` as (LoadedModel.prompt_tokens, its own path)."""
        with self._prompts_lock:
            return self._prompts_or_refuse().prompt_tokens(prompt)

    def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        """base.Tokenizing: the text a stream prints for `token_ids` (control tokens as nothing)."""
        with self._prompts_lock:
            return self._prompts_or_refuse().text(token_ids)

    def _prompts_or_refuse(self) -> LoadedModel:
        self.check_serving()
        prompts = self._prompts
        if prompts is None:  # between the lifecycle's SERVING and the engine thread's, or after its end
            raise _not_started_error()
        return prompts

    def _thread_main(self, ready: concurrent.futures.Future[Loaded]) -> None:
        if not ready.set_running_or_notify_cancel():
            return
        try:
            worker = Worker(
                self._config,
                self._mailbox,
                self._set_active,
                self.step_reporter.step,
                self._set_kv_used,
                guided=bool(self._capabilities.constraints),
            )
        except BaseException as exc:
            log.exception("llamacpp: loading failed")
            ready.set_exception(exc)
            return
        try:
            worker.warm_up()
        except BaseException as exc:
            log.exception("llamacpp: warming up failed")
            worker.free()
            self._set_active(0)
            ready.set_exception(exc)
            return
        with self._prompts_lock:
            self._prompts = worker.prompts
        self._mailbox.open()
        ready.set_result(worker.loaded)
        try:
            worker.run()
            worker.fail_all(_closed_error, self._mailbox.close(_closed_error))
        except BaseException as exc:
            log.exception("llamacpp: the engine thread crashed")
            self._mark_dead()
            why = f"thread crashed: {exc!r}"
            left = self._mailbox.close(lambda: dead_error(ENGINE_NAME, why))
            try:
                worker.fail_all(lambda: dead_error(ENGINE_NAME, why), left)
            except BaseException:
                log.exception("llamacpp: could not report the crash to every stream")
        finally:
            with self._prompts_lock:  # a Tokenize in flight ends before the model is freed; later ones are refused
                self._prompts = None
            worker.free()
            self._set_active(0)
            self._kv_used = 0.0
