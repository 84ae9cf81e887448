"""Shared KV accounting and the prefix LRU against a simulated unified cache; slots from the context (no model)."""

from __future__ import annotations

import random

from rillet.server.config import LlamaCppConfig
from rillet.server.engine.llamacpp import MAX_AUTO_SLOTS, resolve_slots
from rillet.server.engine.llamacpp.kvshare import Holder, KvLedger, PrefixCache, common_prefix
from tests.engine.kvsim import FakeMemory, decode


def test_shared_cells_are_counted_once_and_freed_when_their_last_holder_goes() -> None:
    memory = FakeMemory()
    ledger = KvLedger(memory, batch_ids=4, seq_ids=32, pinned=True)
    a = ledger.new()
    decode(memory, ledger, a, 100)
    b = ledger.new()
    ledger.share(b, a, 60)
    decode(memory, ledger, b, 10)
    assert ledger.used == len(memory.cells) == 110
    assert memory.positions(b.seq_id) == list(range(70))
    assert b.pin is not None
    assert memory.positions(b.pin) == list(range(70))  # pinned: every cell has a second holder
    assert ledger.drop(a) == 40  # a's cells 60..99 go; 0..59 stay for b
    assert ledger.used == len(memory.cells) == 70
    assert ledger.drop(b) == 70
    assert memory.cells == []


def test_retiring_moves_the_cells_off_the_batch_id() -> None:
    memory = FakeMemory()
    ledger = KvLedger(memory, batch_ids=2, seq_ids=8, pinned=True)
    a = ledger.new()
    decode(memory, ledger, a, 5)
    batch_id = a.seq_id
    ledger.retire(a)
    assert a.seq_id >= 2
    assert memory.positions(batch_id) == []
    assert memory.positions(a.seq_id) == list(range(5))
    assert ledger.new().seq_id == batch_id  # free for the next running sequence
    assert ledger.used == 5


def test_random_share_grow_drop_keeps_the_count_equal_to_the_cache() -> None:
    """The ledger's count against the simulated cache after every operation, in random order."""
    rng = random.Random(7)
    memory = FakeMemory()
    ledger = KvLedger(memory, batch_ids=64, seq_ids=256, pinned=True)
    holders: list[Holder] = []
    for step in range(1000):
        action = rng.random()
        if action < 0.3 and len(holders) < 40:
            holder = ledger.new()
            donors = [h for h in holders if h.length > 0]
            if donors and rng.random() < 0.7:
                donor = rng.choice(donors)
                ledger.share(holder, donor, rng.randint(1, donor.length))
            holders.append(holder)
        elif action < 0.75 and holders:
            decode(memory, ledger, rng.choice(holders), rng.randint(1, 20))
        elif holders:
            victim = holders.pop(rng.randrange(len(holders)))
            before = len(memory.cells)
            freed = ledger.drop(victim)
            assert freed == before - len(memory.cells)
        assert ledger.used == len(memory.cells)
        if step % 25 == 0:
            for holder in holders:  # every holder still sees exactly its positions
                assert memory.positions(holder.seq_id) == list(range(holder.length))


def test_the_cache_finds_the_longest_prefix_drops_covered_entries_and_evicts_oldest_first() -> None:
    memory = FakeMemory()
    ledger = KvLedger(memory, batch_ids=4, seq_ids=32, pinned=True)
    cache = PrefixCache(ledger, max_entries=2)

    def entry(tokens: list[int]) -> Holder:
        holder = ledger.new()
        decode(memory, ledger, holder, len(tokens))
        ledger.retire(holder)
        cache.keep(holder, tokens)
        return holder

    short = entry([1, 2, 3])
    longer = entry([1, 2, 3, 4, 5])  # covers `short`, which goes
    assert short not in cache
    assert longer in cache
    other = entry([1, 9, 9, 9])
    assert cache.longest([1, 2, 3, 4, 7]) == (longer, 4)
    assert cache.longest([5, 5]) == (None, 0)
    cache.touch(longer)
    assert cache.evict(keep=None) == 4  # `other` was used least recently
    assert other not in cache
    assert cache.evict(keep=longer) is None
    third = entry([7, 7, 7])
    fourth = entry([8, 8, 8])  # past max_entries: the oldest goes
    assert longer not in cache
    assert third in cache
    assert fourth in cache
    assert ledger.used == len(memory.cells) == 6


def test_cache_entries_are_found_and_made_redundant_only_within_their_scope() -> None:
    memory = FakeMemory()
    ledger = KvLedger(memory, batch_ids=4, seq_ids=32, pinned=True)
    cache = PrefixCache(ledger, max_entries=8)

    def entry(tokens: list[int], scope: str) -> Holder:
        holder = ledger.new()
        decode(memory, ledger, holder, len(tokens))
        ledger.retire(holder)
        cache.keep(holder, tokens, scope)
        return holder

    memo = entry([1, 2, 3, 4, 5, 6], "tenant:a")
    assert cache.longest([1, 2, 3, 4, 5, 9], "tenant:b") == (None, 0)  # b never sees a's prompt
    assert cache.longest([1, 2, 3, 4, 5, 9], "tenant:a") == (memo, 5)  # a reuses its own
    copy = entry([1, 2, 3, 4], "tenant:b")  # covered by a's entry, yet kept: it is b's own
    longer = entry([1, 2, 3, 4, 5, 6, 7], "tenant:b")  # covers b's shorter entry only
    assert memo in cache
    assert copy not in cache
    assert longer in cache
    assert cache.longest([1, 2, 3, 4, 5, 6, 7, 8], "tenant:b") == (longer, 7)
    assert ledger.used == len(memory.cells)


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_slots_follow_the_context_unless_set() -> None:
    assert resolve_slots(LlamaCppConfig(context_length=4096)) == 16
    assert resolve_slots(LlamaCppConfig(context_length=1024)) == 4
    assert resolve_slots(LlamaCppConfig(context_length=256)) == 1
    assert resolve_slots(LlamaCppConfig(context_length=65536)) == MAX_AUTO_SLOTS
    assert resolve_slots(LlamaCppConfig(context_length=4096, slots=8)) == 8
