"""KV cells shared between the sequences of a unified llama.cpp cache: exact accounting and the prompt-prefix LRU."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Holder", "KvLedger", "KvMemory", "PrefixCache", "common_prefix"]

Tokens = npt.NDArray[np.int32]


class KvMemory(Protocol):
    """The two cache operations sharing needs (LlamaContext implements them on llama.cpp's memory)."""

    def copy_cells(self, src: int, dst: int, start: int, end: int) -> None:
        """The cells of `src` at positions [start, end) also belong to `dst` (shared, not copied)."""
        ...

    def remove_sequence(self, seq_id: int) -> None:
        """`seq_id` lets go of all its cells; a cell no sequence holds is free."""
        ...


class Holder:
    """The KV cells at positions [0, length) of one llama.cpp sequence id, plus a pin id that holds them too.

    Why the pin: in a sliding-window (SWA) layer llama.cpp may overwrite a cell that only one sequence holds once
    that sequence has moved a window past it. A prefix shorter than what its holder went on to decode would then
    miss cells it needs; a second sequence id on every cell keeps llama.cpp from ever reusing it while held.
    `base` is the holder whose cells [0, shared) this one shares; its own cells are [shared, length).
    """

    __slots__ = ("base", "children", "length", "pin", "seq_id", "shared")

    def __init__(self, seq_id: int, pin: int | None) -> None:
        self.seq_id = seq_id
        self.pin = pin
        self.length = 0
        self.base: Holder | None = None
        self.shared = 0
        self.children: list[Holder] = []

    @property
    def own(self) -> int:
        """Cells only this holder accounts for (the cache's used cells are the sum of every holder's own)."""
        return self.length - self.shared


def common_prefix(a: Sequence[int] | Tokens, b: Sequence[int] | Tokens) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    left = np.asarray(a[:n], dtype=np.int32)
    right = np.asarray(b[:n], dtype=np.int32)
    differ = np.flatnonzero(left != right)
    return int(differ[0]) if differ.size else n


class KvLedger:
    """Which sequence ids hold which KV cells, and how many distinct cells that makes.

    Invariants: a holder's cells [0, shared) are exactly its base's cells [0, shared) (shared ≤ base.length), so
    the holders form a forest and the cache holds exactly Σ own cells; every operation on llama.cpp's memory goes
    through here, so the count never drifts from the cache. Sequence ids: a token in a batch must name an id below
    the context's n_seq_max (`batch_ids`, one per slot), while a unified cache's memory operations take any id below
    LLAMA_MAX_SEQ (`seq_ids`): pins and retired holders (the prefix cache's entries) use those above the batch ids.
    Owned by the engine thread.
    """

    def __init__(self, memory: KvMemory, batch_ids: int, seq_ids: int, *, pinned: bool) -> None:
        self._memory = memory
        self._pinned = pinned
        self._batch_ids = batch_ids
        self._free_batch = list(range(batch_ids - 1, -1, -1))
        self._free_high = list(range(seq_ids - 1, batch_ids - 1, -1))
        self._holders: set[Holder] = set()

    @property
    def used(self) -> int:
        """Cells held by any sequence."""
        return sum(holder.own for holder in self._holders)

    @property
    def spare_ids(self) -> int:
        """Ids above the batch ids not in use (a running holder takes one for its pin, a retired one two)."""
        return len(self._free_high)

    def new(self) -> Holder:
        """An empty holder with a batch id (and a pin); IndexError when none are left."""
        seq_id = self._free_batch.pop()
        holder = Holder(seq_id, self._free_high.pop() if self._pinned else None)
        self._holders.add(holder)
        return holder

    def retire(self, holder: Holder) -> None:
        """Move `holder`'s cells from its batch id to a spare id, freeing the batch id for a running sequence."""
        spare = self._free_high.pop()
        self._memory.copy_cells(holder.seq_id, spare, 0, holder.length)
        self._memory.remove_sequence(holder.seq_id)
        self._release_id(holder.seq_id)
        holder.seq_id = spare

    def share(self, holder: Holder, base: Holder, count: int) -> None:
        """Give the empty `holder` the first `count` cells of `base` (no copy: the cells get a second owner)."""
        if holder.length or not 0 < count <= base.length or holder is base:
            raise ValueError(f"cannot share {count} of {base.length} cells into a holder of {holder.length}")
        self._copy(base, holder, 0, count)
        holder.base, holder.shared, holder.length = base, count, count
        base.children.append(holder)

    def grow(self, holder: Holder, count: int) -> None:
        """Record `count` cells just decoded for `holder` at its next positions (and pin them)."""
        if holder.pin is not None:
            self._memory.copy_cells(holder.seq_id, holder.pin, holder.length, holder.length + count)
        holder.length += count

    def drop(self, holder: Holder) -> int:
        """Release `holder`'s cells and ids; returns how many cells became free.

        Cells it shares with holders that live on stay: the child sharing the most of them takes its place in the
        forest (its base becomes ours), the other children re-root on that child.
        """
        self._memory.remove_sequence(holder.seq_id)
        if holder.pin is not None:
            self._memory.remove_sequence(holder.pin)
        self._holders.discard(holder)
        base = holder.base
        if base is not None:
            base.children.remove(holder)
        kept = holder.shared  # 0 without a base
        if holder.children:
            heir = max(holder.children, key=lambda child: child.shared)
            kept = max(kept, heir.shared)
            heir.base = base
            heir.shared = min(heir.shared, holder.shared)
            if base is not None:
                base.children.append(heir)
            for child in holder.children:
                if child is not heir:
                    child.base = heir
                    heir.children.append(child)
            holder.children = []
        freed = holder.length - kept
        holder.base, holder.shared, holder.length = None, 0, 0
        self._release_id(holder.seq_id)
        if holder.pin is not None:
            self._release_id(holder.pin)
        return freed

    def reset(self, holder: Holder) -> int:
        """Drop `holder`'s cells but keep it (same ids, now empty); returns the cells freed."""
        freed = self.drop(holder)
        self._take_id(holder.seq_id)
        if holder.pin is not None:
            self._take_id(holder.pin)
        self._holders.add(holder)
        return freed

    def clear(self) -> None:
        """Forget every holder (the caller has emptied the cache itself)."""
        for holder in list(self._holders):
            holder.base, holder.children, holder.shared, holder.length = None, [], 0, 0
            self._release_id(holder.seq_id)
            if holder.pin is not None:
                self._release_id(holder.pin)
        self._holders.clear()

    def _release_id(self, seq_id: int) -> None:
        (self._free_batch if seq_id < self._batch_ids else self._free_high).append(seq_id)

    def _take_id(self, seq_id: int) -> None:
        (self._free_batch if seq_id < self._batch_ids else self._free_high).remove(seq_id)

    def _copy(self, src: Holder, dst: Holder, start: int, end: int) -> None:
        self._memory.copy_cells(src.seq_id, dst.seq_id, start, end)
        if dst.pin is not None:
            self._memory.copy_cells(src.seq_id, dst.pin, start, end)


class PrefixCache:
    """The cells of finished requests (prompt and output), kept in least-recently-used order for later prompts.

    Each entry is a Holder of the ledger with the tokens at its positions and the cache scope of the request that
    computed them (GenerationRequest.cache_scope). Invariant: an entry is found (`longest`) and made redundant
    (`keep`) only by requests of its own scope, so nothing a request of one scope sees (cached_input_tokens, how
    soon its prefill ends) depends on the prompts of another. Entries count against the context like any cells; the
    engine evicts them (oldest use first) before it preempts a running request. An entry whose tokens start another
    entry's of the same scope is redundant and is dropped.
    """

    def __init__(self, ledger: KvLedger, max_entries: int) -> None:
        self._ledger = ledger
        self._max = max_entries
        self._entries: collections.OrderedDict[Holder, tuple[str, Tokens]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, holder: object) -> bool:
        return holder in self._entries

    def keep(self, holder: Holder, tokens: Sequence[int], scope: str = "") -> int:
        """Take `holder` (with `tokens` at its positions) as the newest entry; returns the cells freed meanwhile."""
        kept = np.asarray(tokens[: holder.length], dtype=np.int32)
        freed = 0
        for other, (other_scope, other_tokens) in list(self._entries.items()):
            if other_scope != scope:
                continue
            shared = common_prefix(kept, other_tokens)
            if shared == len(kept):  # an existing entry covers this one
                self._entries.move_to_end(other)
                return self._ledger.drop(holder)
            if shared == len(other_tokens):  # this one covers an existing entry
                del self._entries[other]
                freed += self._ledger.drop(other)
        self._entries[holder] = (scope, kept)
        while len(self._entries) > self._max:
            freed += self.evict() or 0
        return freed

    def longest(self, tokens: Sequence[int] | Tokens, scope: str = "") -> tuple[Holder | None, int]:
        """The entry of `scope` sharing the longest prefix with `tokens`, and that length ((None, 0) if none shares)."""
        best: Holder | None = None
        best_len = 0
        query = np.asarray(tokens, dtype=np.int32)
        for holder, (held_scope, held) in self._entries.items():
            if held_scope != scope:
                continue
            shared = common_prefix(query, held)
            if shared > best_len:
                best, best_len = holder, shared
        return best, best_len

    def idle_cells(self) -> int:
        """Cells only the cache keeps: the own cells of entries no other holder shares from.

        They are evicted before any request waits or is preempted, so to a router they are room.
        """
        return sum(holder.own for holder in self._entries if not holder.children)

    def touch(self, holder: Holder) -> None:
        """Mark an entry as just used."""
        if holder in self._entries:
            self._entries.move_to_end(holder)

    def evict(self, keep: Holder | None = None) -> int | None:
        """Drop the least recently used entry other than `keep`: the cells freed, or None if there was none."""
        for holder in self._entries:
            if holder is not keep:
                del self._entries[holder]
                return self._ledger.drop(holder)
        return None

    def clear(self) -> None:
        """Forget the entries (the caller empties the cache and the ledger)."""
        self._entries.clear()
