"""The KV planner: which sequences run, which KV cells they hold or share, and what each step feeds (pure).

It makes no llama.cpp call: its only effects are on the KV ledger (whose memory is llama.cpp's context in the engine
and a simulated cache in tests/engine/test_planner.py) and on plain sequence records. The worker applies its
decisions: samplers for the sequences it admits, the batch it plans, the end of the sequences it releases.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from rillet.server.engine.llamacpp.kvshare import Holder, KvLedger, PrefixCache, common_prefix
from rillet.server.engine.llamacpp.pacing import PrefillPacer
from rillet.server.types import GenerationRequest, Priority

__all__ = ["MIN_SHARED_TOKENS", "OLDEST_PREFILL_SHARE", "KvPlanner", "KvSequence", "share_budget"]

log = logging.getLogger(__name__)

MIN_SHARED_TOKENS = 8
"""A cached prefix shorter than this is not reused (every prompt shares its BOS token; a few more save nothing)."""
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


@dataclass(eq=False)
class KvSequence:
    """One request as the planner sees it: its tokens, the KV cells it holds, where it stands in arrival order.

    Invariant: `tokens` is the prompt followed by every sampled token the next sample depends on, and its first
    `cached` tokens (and only those) hold KV cells under `kv` (a running sequence's; some may be shared with a
    cached prefix). So `tokens[cached:]` is what the next decodes must feed: the unprefilled prompt, the last sampled
    token, or, after a preemption dropped the cells, everything. `reused` counts the prompt tokens whose cells came
    from a cached prefix rather than this request's own prefill (usage.cached_input_tokens): only the first pass
    counts (`sampled` False); a preempted sequence prefilled again resumes, it does not reuse.
    """

    request: GenerationRequest
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    arrival: int = 0
    kv: Holder | None = None
    reused: int = 0
    sampled: bool = False
    cancelled: bool = False

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


S = TypeVar("S", bound=KvSequence)


def _sequence_id(seq: KvSequence) -> int:
    assert seq.kv is not None  # a running sequence's
    return seq.kv.seq_id


class KvPlanner(Generic[S]):
    """Admission, KV room, prefix sharing, each step's batch and preemption over `cells` KV cells and `slots` slots.

    Invariants:
    - a sequence is in exactly one of `pending` (waiting for a slot and KV room) or `running` (holds a slot and a KV
      holder) until it is released; releasing frees both at once;
    - every running sequence arrived before every pending one, and both lists are in arrival order (admission takes
      the head of `pending`: FIFO, so a long prompt is never overtaken forever by short ones; a preempted sequence,
      the newest running, goes back to its head), so the newest running sequence is `running[-1]`;
    - every KV cell is accounted for by the ledger (`kvshare.KvLedger`): running sequences' and the prefix cache's
      entries', a cell shared by several counted once;
    - KV cells are taken as tokens are decoded, never reserved for tokens that may come: a sequence is admitted when
      its tokens not yet cached fit beside the cells in use and the running ones' tokens to come, with one spare
      cell per running sequence (the next step's decodes), so a large max_tokens never holds a short request back;
      cached prefixes are evicted (least recently used first) to make that room;
    - `plan` keeps the cells in use plus each step's tokens within the context: it evicts cached prefixes first,
      and only when none is left and the next token of every decoding sequence would still not fit does it preempt
      the newest running one of batch priority, else the newest (its cells are dropped, its tokens kept; at the head
      of `pending` it is prefilled again, which resumes it where it stopped: clients see only a pause). The oldest
      running sequence is never preempted for another one and fits alone (prompt + max_tokens ≤ the per-sequence
      limit ≤ the context), so every admitted request finishes;
    - prefix reuse (with a prefix cache only): before its prefill a sequence takes the longest prefix of its tokens
      held by a cached entry or a running sequence as shared cells (never its last token, which must yield logits);
      one whose prefix an older sequence is prefilling right now waits for those cells rather than computing them
      twice. All three only within the request's cache scope (GenerationRequest.cache_scope: a tenant's own unless
      the operator groups tenants), so no tenant's reuse, usage or timing tells it anything of another's prompts;
    - every step decodes one token per running sequence that has sampled, plus at most the pacer's budget of prompt
      tokens of the others (`share_budget`: a floor for the oldest, then shortest first): its whole batch when
      nothing decodes or only batch requests do, beside interactive decodes a chunk sized to keep their inter-token
      gap within its bound, never below its floor while an interactive prompt waits (`pacing.PrefillPacer`). With
      FIFO admission and the oldest prompt's share, no prompt starves: each in turn is the oldest and advances every
      step (by a token at least).
    Owned by the engine thread.
    """

    def __init__(
        self, ledger: KvLedger, cache: PrefixCache | None, *, cells: int, slots: int, pacer: PrefillPacer
    ) -> None:
        self.pending: collections.deque[S] = collections.deque()
        self.running: list[S] = []
        self._ledger = ledger
        self._cache = cache
        self._cells = cells
        self._slots = slots
        self._pacer = pacer
        self._arrivals = 0

    # Entry and exit --------------------------------------------------------------------------------------------------

    def enqueue(self, seq: S) -> None:
        """Queue a sequence with its tokens, as the newest arrival."""
        seq.prompt_tokens = len(seq.tokens)
        seq.arrival = self._arrivals
        self._arrivals += 1
        self.pending.append(seq)

    def drop_cancelled(self) -> list[S]:
        """Take the cancelled sequences out (a running one's cells join the prefix cache); returns them."""
        dropped: list[S] = []
        if any(seq.cancelled for seq in self.pending):
            dropped = [seq for seq in self.pending if seq.cancelled]
            self.pending = collections.deque(seq for seq in self.pending if not seq.cancelled)
        for seq in [seq for seq in self.running if seq.cancelled]:
            self.release(seq)
            dropped.append(seq)
        return dropped

    def release(self, seq: S, *, keep: bool = True) -> None:
        """End a running sequence: its slot at once, its KV cells too unless the prefix cache keeps them.

        They join the cache when `keep` (and there is one): finished and cancelled requests, not failed ones.
        """
        self.running.remove(seq)
        if seq.kv is not None:
            if keep and self._cache is not None and seq.kv.length >= MIN_SHARED_TOKENS:
                self._ledger.retire(seq.kv)
                self._cache.keep(seq.kv, seq.tokens, seq.request.cache_scope)
            else:
                self._ledger.drop(seq.kv)
            seq.kv = None

    def drain(self) -> list[S]:
        """Every sequence out, running ones first (their cells dropped, not cached); returns them."""
        running = list(self.running)
        for seq in running:
            self.release(seq, keep=False)
        drained = [*running, *self.pending]
        self.pending.clear()
        return drained

    def clear(self) -> None:
        """Forget every cell (the caller has emptied llama.cpp's memory): the cache and the ledger start empty."""
        if self._cache is not None:
            self._cache.clear()
        self._ledger.clear()

    # Admission -------------------------------------------------------------------------------------------------------

    def admit(self) -> list[S]:
        """Move pending sequences into free slots in arrival order while their tokens fit; returns those admitted."""
        admitted: list[S] = []
        while self.pending and len(self.running) < self._slots:
            seq = self.pending[0]
            if not self._make_room(seq):
                break  # arrival order: a long prompt is not overtaken forever by short ones
            self.pending.popleft()
            seq.kv = self._ledger.new()
            self._seed(seq)
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def _make_room(self, seq: S) -> bool:
        """Whether `seq`'s tokens not yet cached fit now, evicting cached prefixes (oldest use first) as needed.

        The room needed counts the running sequences' tokens still to come and one spare cell per running sequence.
        """
        while True:
            source, reuse = self._source(seq)
            to_come = sum(other.uncached for other in self.running)
            need = len(seq.tokens) - reuse + len(self.running) + 1
            if self._ledger.used + to_come + need <= self._cells:
                return True
            if self._cache is None:
                return False
            if self._cache.evict(keep=source) is None and self._cache.evict() is None:
                return False

    def _source(self, seq: S) -> tuple[Holder | None, int]:
        """The holder (cached entry or running sequence) sharing the longest prefix with `seq`'s tokens, and how many.

        Only holders of `seq`'s cache scope; never `seq`'s last token (it must be decoded for logits); (None, 0)
        below MIN_SHARED_TOKENS or without a prefix cache.
        """
        if self._cache is None:
            return None, 0
        scope = seq.request.cache_scope
        best, best_len = self._cache.longest(seq.tokens, scope)
        for other in self.running:
            if other is seq or other.request.cache_scope != scope:
                continue
            if other.kv is not None and other.kv.length > best_len:
                shared = common_prefix(other.tokens[: other.kv.length], seq.tokens)
                if shared > best_len:
                    best, best_len = other.kv, shared
        best_len = min(best_len, len(seq.tokens) - 1)
        return (best, best_len) if best_len >= MIN_SHARED_TOKENS else (None, 0)

    def _seed(self, seq: S) -> None:
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
        if not seq.sampled:  # the prompt's first pass: what it reused is what usage reports
            seq.reused = min(reuse, seq.prompt_tokens)

    # One step --------------------------------------------------------------------------------------------------------

    def plan(self) -> list[tuple[S, int]]:
        """The next step's work, (sequence, tokens to feed) with decodes first, within the free KV cells.

        Evicts cached prefixes, then preempts the newest running sequence, until the step fits (see the invariants).
        The decodes go in KV sequence-id order: with a KV stream per slot (kv_unified false) llama.cpp computes a
        batch in one part per run of consecutive ids (its sequential split_equal), each part a pass of the weights,
        so decodes in arrival order cost a pass per break in the ids (measured: 140 against 80 ms a decode call,
        bench/engine_steps.py, 8 slots). A unified cache computes them together either way.
        """
        waiting = self._share()
        while True:
            free = self._cells - self._ledger.used
            decodes = [seq for seq in self.running if not seq.prefilling]
            prefills = [seq for seq in self.running if seq.prefilling and seq not in waiting]
            groups = self._prefill_groups(decodes, prefills)
            wanted = len(decodes) + min(sum(budget for _, budget in groups), sum(seq.uncached for seq in prefills))
            if wanted <= free:
                break
            if self._cache is not None and self._cache.evict() is not None:
                continue
            if len(self.running) == 1 or (len(decodes) <= free and free > 0):
                break
            self._preempt(self._victim())
        work = [(seq, 1) for seq in sorted(decodes, key=_sequence_id)]
        room = free - len(decodes)
        for group, budget in groups:
            budget = min(budget, room)
            if budget > 0 and group:
                grants = share_budget([seq.uncached for seq in group], budget)
                work += [(seq, grant) for seq, grant in zip(group, grants, strict=True) if grant > 0]
                room -= sum(grants)
        return work

    def _prefill_groups(self, decodes: Sequence[S], prefills: Sequence[S]) -> list[tuple[list[S], int]]:
        """The prompts in prefill in the order they are granted tokens, each group with this step's budget for it.

        Only interactive decodes are latency-sensitive: beside batch decodes alone (or none) every waiting prompt
        shares the pacer's whole batch. Beside interactive decodes their inter-token gap is bounded, against their
        own decode-only step (batch decodes' rows count against the room), and the floor, which overrides that
        bound, is a guarantee for interactive prompts only: they go first, and batch prompts get what the bound
        leaves after the interactive prompts' grants, at least a token a step, so they never starve and never
        stretch the gap for more than a token's cost.
        """
        sensitive = sum(1 for seq in decodes if seq.request.priority is not Priority.BATCH)
        if not sensitive:
            return [(list(prefills), self._pacer.budget(0))]
        interactive = [seq for seq in prefills if seq.request.priority is not Priority.BATCH]
        batch = [seq for seq in prefills if seq.request.priority is Priority.BATCH]
        granted = 0
        if interactive:
            budget = self._pacer.budget(len(decodes), sensitive=sensitive)
            granted = min(budget, sum(seq.uncached for seq in interactive))
        if not batch:
            return [(interactive, granted)]
        bound = self._pacer.budget(len(decodes), sensitive=sensitive, floor=False)
        return [(interactive, granted), (batch, max(1, bound - granted))]

    def decoded(self, work: Sequence[tuple[S, int]]) -> None:
        """Record that a step fed `work`: each sequence now holds the cells of the tokens it fed."""
        for seq, count in work:
            assert seq.kv is not None
            self._ledger.grow(seq.kv, count)

    def no_room(self) -> bool:
        """llama.cpp found no room for a planned step where the count did: free some for the next step.

        A cached prefix goes, else the newest running sequence is preempted. False when one sequence runs alone:
        nothing is left to free for it (the caller fails it).
        """
        if len(self.running) <= 1:
            return False
        if self._cache is None or self._cache.evict() is None:
            self._preempt(self._victim())
        return True

    def _share(self) -> set[S]:
        """Give sequences about to prefill the longest cached prefix; returns those that wait for an older one's.

        Only a sequence with no cells of its own yet takes shared cells (its cells are then one prefix of one
        holder). It waits, skipping this step's prefill, while an older running sequence of its cache scope is
        prefilling tokens it would share: computing them once and sharing them beats computing them twice at once.
        """
        waiting: set[S] = set()
        if self._cache is None:
            return waiting
        for index, seq in enumerate(self.running):
            if seq.kv is None or not seq.prefilling or seq.kv.own > 0:
                continue
            self._seed(seq)
            for older in self.running[:index]:
                if older.prefilling and older.request.cache_scope == seq.request.cache_scope:
                    ahead = min(common_prefix(older.tokens, seq.tokens), len(seq.tokens) - 1)
                    if ahead >= MIN_SHARED_TOKENS and older.cached < ahead and seq.cached < ahead:
                        waiting.add(seq)
                        break
        return waiting

    def _victim(self) -> S:
        """The running sequence to preempt: the newest of batch priority, else the newest; never the oldest.

        The caller preempts only with two or more running.
        """
        for seq in reversed(self.running[1:]):
            if seq.request.priority is Priority.BATCH:
                return seq
        return self.running[-1]

    def cells_in_use(self) -> int:
        """KV cells that running sequences hold or read: every held cell but those only the prefix cache keeps.

        An entry some other holder shares from counts whole, so this errs high.
        """
        idle = self._cache.idle_cells() if self._cache is not None else 0
        return self._ledger.used - idle

    def _preempt(self, seq: S) -> None:
        """Drop a running sequence's KV cells and slot; it waits at the head of `pending` to be prefilled again."""
        log.info(
            "llamacpp: the KV cache is full: one of %d running requests (%s priority) gives up its %d cells and will "
            "be prefilled again",
            len(self.running),
            seq.request.priority.name.lower(),
            seq.cached,
        )
        self.running.remove(seq)
        if seq.kv is not None:
            self._ledger.drop(seq.kv)
            seq.kv = None
        self.pending.appendleft(seq)
