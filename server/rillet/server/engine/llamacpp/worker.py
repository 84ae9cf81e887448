"""The engine thread's step loop: the planner's batch decoded, each sequence's next token sampled, decoded and sent."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rillet.server.config import LlamaCppConfig
from rillet.server.engine.constraints import grammar
from rillet.server.engine.cpu import available_cores
from rillet.server.engine.llamacpp.governor import ThreadGovernor
from rillet.server.engine.llamacpp.guide import Guide, guidance_tokenizer
from rillet.server.engine.llamacpp.handoff import Item, Mailbox, Outbox, SubmittedSequence
from rillet.server.engine.llamacpp.kvshare import KvLedger, PrefixCache
from rillet.server.engine.llamacpp.model import Loaded, LoadedModel
from rillet.server.engine.llamacpp.pacing import PrefillPacer
from rillet.server.engine.llamacpp.planner import KvPlanner
from rillet.server.engine.llamacpp.sampling import new_sampler, token_logprobs
from rillet.server.engine.llamacpp.settings import resolve_slots
from rillet.server.engine.text import TextDecoder
from rillet.server.errors import Internal, RilletError
from rillet.server.reasons import Reason
from rillet.server.types import (
    Constraint,
    ConstraintKind,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenDelta,
    TokenLogprobs,
    Usage,
)

if TYPE_CHECKING:
    from llguidance import LLTokenizer

    from rillet.server.engine.llamacpp.native import LlamaContext

__all__ = ["Worker"]

log = logging.getLogger(__name__)


WARM_UP_CONSTRAINT = Constraint(ConstraintKind.REGEX, "[0-9][^0-9]+")
"""Warm-up's constraint: a step that allows a few tokens, then steps that allow nearly all (both ways of masking)."""

FLASH_ATTENTION_TILE_ROWS = 64
"""Decodes and prompt tokens share a llama_decode only below this many rows: llama.cpp's CPU flash attention
(GGML_FA_TILE_Q) computes a batch of this many rows or more in tiles of 64 query rows, each against every KV tile
that any of its rows needs, so prompt rows in a tile with decode rows also paid for the decoders' cells (and the
decoders' cells, one new cell per step, are scattered over the cache). Measured (8 streams of distinct 512-token
prompts, 1 thread): 31% less CPU with the decodes in a call of their own; below 64 rows llama.cpp's row-by-row
path skips every masked cell, and the decodes ride along for their share of the weights' pass."""


def _kv(
    config: LlamaCppConfig, context: LlamaContext, slots: int, pacer: PrefillPacer
) -> tuple[KvPlanner[SubmittedSequence], int]:
    """The KV planner over `context`'s cells, and how many prefixes its cache may keep (0: none)."""
    from rillet.server.engine.llamacpp import native

    if config.kv_unified:  # ids beyond the slots: pins, and the cached prefixes (two ids each)
        ledger = KvLedger(context, slots, native.max_sequence_ids(), pinned=True)
        entries = min(config.prefix_cache, (ledger.spare_ids - slots) // 2)
    else:  # one stream per slot: cells cannot be shared across them
        ledger = KvLedger(context, slots, slots, pinned=False)
        entries = 0
    cache = PrefixCache(ledger, entries) if entries > 0 else None
    planner = KvPlanner[SubmittedSequence](ledger, cache, cells=context.n_ctx, slots=slots, pacer=pacer)
    return planner, entries


class Worker:
    """The engine thread's state: the model, the KV planner and the step loop. Touched by that thread only.

    Invariants (the planner's on KV cells and admission are in planner.KvPlanner):
    - a running sequence holds a sampler (kept across a preemption: penalties and draws go on), a pending one that
      was never admitted none; ending a sequence frees its sampler with its slot; a constrained one's guide is kept
      across a preemption too (guide.Guide: its matcher has taken every token emitted);
    - every step decodes the planner's batch in one `llama_decode` (in two, the decodes first, once decodes and
      prompt tokens together reach FLASH_ATTENTION_TILE_ROWS rows), asking for logits only on the last row of each
      sequence whose tokens it completes, and samples exactly those sequences; the pacer hears every step's time;
    - every sequence seen gets exactly one terminal item (EngineFinished or an error) unless it was cancelled, and
      its items reach its stream in order, handed over once per step (handoff.Outbox);
    - a token's text goes through the sequence's TextDecoder (whole UTF-8 characters, stop strings held back); an
      end-of-generation token is neither sent nor counted;
    - a constrained sequence samples only what its guide allows and ends STOP once its constraint is complete (or at
      an end-of-generation token, which the guide allows only where the constraint accepts); an unconstrained one
      never touches the constraint path.
    """

    def __init__(
        self,
        config: LlamaCppConfig,
        mailbox: Mailbox,
        set_active: Callable[[int], None],
        on_step: Callable[[int], None] = lambda _: None,
        on_kv: Callable[[float], None] = lambda _: None,
        *,
        guided: bool = False,
    ) -> None:
        self._mailbox = mailbox
        self._set_active = set_active
        self._on_step = on_step  # hears each served step's batch size (not warm-up's)
        self._on_kv = on_kv  # hears the share of KV cells running requests hold, after each pass of the loop
        self._slots = resolve_slots(config)
        self._governor = ThreadGovernor(available_cores()) if config.n_threads == 0 else None
        threads = self._governor.threads if self._governor is not None else config.n_threads
        self._model = LoadedModel(config, slots=self._slots, threads=threads)
        self.model = self._model.model
        self.context = self._model.context
        self._pacer = PrefillPacer(
            batch=config.prefill_batch, floor=config.prefill_budget, stretch=config.decode_stretch
        )
        self._planner, entries = _kv(config, self.context, self._slots, self._pacer)
        self._outbox = Outbox()
        self._tokenizer: LLTokenizer | None = None  # llguidance's view of the vocabulary, where constraints are on
        if guided:
            try:
                self._tokenizer = guidance_tokenizer(self._model.path)
            except BaseException:
                self._model.free()
                raise
        log.info(
            "llamacpp: loaded %s (%s); %d slots, %d KV cells, %d tokens per sequence, %d thread(s)%s, prefix cache "
            "of %d entries",
            self._model.path.name,
            self.model.description,
            self._slots,
            self.context.n_ctx,
            self._model.limit,
            threads,
            " (adaptive)" if self._governor is not None else "",
            entries,
        )

    @property
    def prompts(self) -> LoadedModel:
        """The model's prompt reader (thread-safe parts: prompt_tokens, text), for the engine's Tokenize."""
        return self._model

    @property
    def loaded(self) -> Loaded:
        return dataclasses.replace(self._model.loaded, tokenizer=self._tokenizer)

    # The loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Step until asked to stop; raises on a fatal error (the caller turns it into EngineDead)."""
        planner = self._planner
        while True:
            arrived = self._mailbox.take(block=not planner.running and not planner.pending)
            if arrived is None:
                return
            for seq in arrived:
                self._accept(seq)
            self._drop_cancelled()
            self._admit()
            if planner.running:
                self._govern()
                if advanced := self._step():
                    self._on_step(advanced)
            self._on_kv(planner.cells_in_use() / self.context.n_ctx)
            self._flush()

    def warm_up(self) -> None:
        """Take every path a request takes once, then empty the KV cache: the first request pays no first-use costs.

        One sequence per slot, so the decodes run as one full batch after a batched prefill; between them they use
        the plain argmax, a penalized greedy chain and the full sampler chain (penalties, top-k, top-p, min-p,
        temperature, seeded draw), logprobs, the detokenizer and stop matching; where constraints are enforced, the
        last is constrained (WARM_UP_CONSTRAINT). Their items are dropped.
        """
        kinds = (
            (SamplingParams(temperature=0.0), None, ()),
            (SamplingParams(temperature=0.0, repetition_penalty=1.1), 2, ()),
            (SamplingParams(0.8, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1, seed=1), 2, ("\n\n",)),
        )
        for index in range(self._slots):
            sampling, top_logprobs, stop = kinds[index % len(kinds)]
            request = GenerationRequest("warm-up", "", "The quick brown fox", 3, sampling, stop, top_logprobs)
            seq = SubmittedSequence(request, sink=None, decoder=TextDecoder(stop), submitted_at=time.perf_counter())
            if self._tokenizer is not None and index == self._slots - 1:
                from llguidance import LLMatcher

                seq.guide = Guide(LLMatcher(self._tokenizer, grammar(WARM_UP_CONSTRAINT), log_level=0))
            self._accept(seq)
        while self._planner.pending:
            self._admit()
            while self._planner.running:
                self._step()
        self.context.clear_memory()
        self._planner.clear()
        self._pacer.clear()
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

    def fail_all(self, make_error: Callable[[], RilletError], extra: Sequence[SubmittedSequence] = ()) -> None:
        """End every sequence with a fresh error from `make_error` and free what they hold."""
        drained = self._planner.drain()
        self._set_active(0)
        for seq in [*drained, *extra]:
            self._free_sampler(seq)
            self._send(seq, make_error())
        self._flush()

    def free(self) -> None:
        for seq in [*self._planner.running, *self._planner.pending]:
            self._free_sampler(seq)
        self._model.free()

    # Admission and release -------------------------------------------------------------------------------------

    def _accept(self, seq: SubmittedSequence) -> None:
        if seq.cancelled:
            return
        try:
            seq.tokens = self._model.tokenize(seq.request)
        except RilletError as error:
            self._send(seq, error)
            return
        self._planner.enqueue(seq)

    def _drop_cancelled(self) -> None:
        dropped = self._planner.drop_cancelled()
        for seq in dropped:
            self._free_sampler(seq)
        if dropped:
            self._set_active(len(self._planner.running))

    def _admit(self) -> None:
        """Admit what the planner lets in; a newly admitted sequence gets its sampler (a resumed one keeps its own)."""
        admitted = self._planner.admit()
        for seq in admitted:
            if seq.sampler is None:
                seq.sampler = new_sampler(self.model, seq.request.sampling, seq.tokens)
            if seq.admitted_at is None:
                seq.admitted_at = time.perf_counter()
        if admitted:
            self._set_active(len(self._planner.running))

    def _release(self, seq: SubmittedSequence, *, keep: bool = True) -> None:
        """End a running sequence: its slot and sampler at once, its cells to the prefix cache if `keep`."""
        self._planner.release(seq, keep=keep)
        self._free_sampler(seq)
        self._set_active(len(self._planner.running))

    @staticmethod
    def _free_sampler(seq: SubmittedSequence) -> None:
        if seq.sampler is not None:
            seq.sampler.free()
            seq.sampler = None

    # One step ----------------------------------------------------------------------------------------------------

    def _step(self) -> int:
        """Decode the planner's batch; returns how many sequences it advanced (0 when llama.cpp found no room).

        Decodes and prompt tokens go in one llama_decode while they stay under FLASH_ATTENTION_TILE_ROWS rows (the
        decodes ride along for their share of the weights' pass), else in two: the decodes first (their tokens go
        out before the prompt tokens are computed), then the prompt tokens. The step's time, from the batch to its
        last output, goes to the pacer.
        """
        planner = self._planner
        running = len(planner.running)
        work = planner.plan()
        if len(planner.running) != running:  # the plan preempted
            self._set_active(len(planner.running))
        if not work:
            return 0
        started = time.perf_counter()
        split = sum(1 for seq, _ in work if not seq.prefilling)  # the planner puts the decodes first
        prompt_tokens = sum(count for _, count in work[split:])
        calls = (
            [work]
            if not split or not prompt_tokens or split + prompt_tokens < FLASH_ATTENTION_TILE_ROWS
            else [work[:split], work[split:]]
        )
        advanced = 0
        for call in calls:
            done = self._decode(call)
            if not done:
                return advanced
            advanced += done
        self._pacer.observe(split, prompt_tokens, time.perf_counter() - started)
        return advanced

    def _decode(self, work: Sequence[tuple[SubmittedSequence, int]]) -> int:
        """One llama_decode of `work`, its outputs sampled and sent; how many sequences it advanced (0: no room)."""
        planner = self._planner
        context = self.context
        context.clear_batch()
        outputs: list[tuple[SubmittedSequence, int]] = []
        for seq, count in work:
            assert seq.kv is not None
            start = seq.cached
            end = start + count
            last = context.add(seq.tokens[start:end], start, seq.kv.seq_id, output_last=end == len(seq.tokens))
            if end == len(seq.tokens):
                outputs.append((seq, last))
        status = context.decode()
        if status == 1:
            if planner.no_room():  # llama.cpp found no room where the plan did: freed some, try at the next step
                self._set_active(len(planner.running))
                return 0
            for seq, _ in work:
                self._release(seq, keep=False)
                self._send(seq, Internal("the KV cache had no room for this request", reason=Reason.KV_CACHE_FULL))
            return 0
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        planner.decoded(work)
        now = time.perf_counter()
        for seq, index in outputs:
            self._emit(seq, index, now)
        return len(work)

    def _emit(self, seq: SubmittedSequence, index: int, now: float) -> None:
        """Sample the next token of `seq` from batch row `index` and send what it adds to the stream."""
        assert seq.sampler is not None
        guide = seq.guide
        raw = None  # a constrained sequence's logits before the mask, for its logprobs
        complete = False
        if guide is None:
            token = seq.sampler.sample(self.context, index)
        else:
            if seq.request.top_logprobs is not None:
                raw = self.context.logits(index).copy()
            try:
                token = guide.sample(seq.sampler, self.context, index)
                complete = not self.model.is_end_of_generation(token) and guide.consume(token)
            except RilletError as error:  # its matcher failed: this sequence alone ends
                self._release(seq)
                self._send(seq, error)
                return
        if not seq.sampled:
            seq.sampled = True
            if seq.admitted_at is not None:
                seq.prefill_seconds = now - seq.admitted_at
        if self.model.is_end_of_generation(token):
            self._finish(seq, FinishReason.STOP)
            return
        logprobs: tuple[TokenLogprobs, ...] = ()
        if seq.request.top_logprobs is not None:
            row = self.context.logits(index) if raw is None else raw
            logprobs = (token_logprobs(row, token, seq.request.top_logprobs),)
        seq.output_tokens += 1
        check = seq.decoder.feed_bytes(self.model.piece(token))
        self._send(seq, TokenDelta(check.emit, (token,), logprobs))
        if check.matched is not None:
            self._finish(seq, FinishReason.STOP_SEQUENCE, check.matched)
        elif complete:
            self._finish(seq, FinishReason.STOP)
        elif seq.output_tokens >= seq.request.max_tokens:
            self._finish(seq, FinishReason.LENGTH)
        else:
            seq.tokens.append(token)

    def _finish(self, seq: SubmittedSequence, reason: FinishReason, matched: str = "") -> None:
        if reason is not FinishReason.STOP_SEQUENCE:
            end = seq.decoder.finish()
            if end.matched is not None:
                reason, matched = FinishReason.STOP_SEQUENCE, end.matched
            if end.emit:
                self._send(seq, TokenDelta(end.emit))
        usage = Usage(input_tokens=seq.prompt_tokens, output_tokens=seq.output_tokens, cached_input_tokens=seq.reused)
        queued = 0.0 if seq.admitted_at is None else seq.admitted_at - seq.submitted_at
        self._release(seq)
        finished = EngineFinished(
            reason, usage, matched, prefill_seconds=seq.prefill_seconds, engine_queue_seconds=queued
        )
        self._send(seq, finished)

    # Delivery ----------------------------------------------------------------------------------------------------

    def _send(self, seq: SubmittedSequence, item: Item) -> None:
        self._outbox.send(seq, item)

    def _flush(self) -> None:
        """Hand this step's items to their event loops; a closed loop's streams are cancelled (nobody reads them)."""
        for loop in self._outbox.flush():
            for seq in [*self._planner.running, *self._planner.pending]:
                if seq.sink is not None and seq.sink.loop is loop:
                    seq.cancelled = True
