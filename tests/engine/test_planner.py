"""The KV planner on a simulated unified cache (no model): admission, eviction, preemption, sharing, the budget."""

from __future__ import annotations

import pytest

from rillet.server.engine.llamacpp.kvshare import KvLedger, PrefixCache
from rillet.server.engine.llamacpp.pacing import PrefillPacer
from rillet.server.engine.llamacpp.planner import MIN_SHARED_TOKENS, KvPlanner, KvSequence, share_budget
from rillet.server.types import GenerationRequest, Priority
from tests.engine.kvsim import FakeMemory

Planner = KvPlanner[KvSequence]


class Cache:
    """A planner over a simulated cache of `cells` cells, stepped as the worker steps it."""

    def __init__(
        self, cells: int, *, slots: int = 4, budget: int = 16, entries: int = 8, pacer: PrefillPacer | None = None
    ) -> None:
        self.memory = FakeMemory()
        self.ledger = KvLedger(self.memory, batch_ids=slots, seq_ids=64, pinned=True)
        self.cache = PrefixCache(self.ledger, entries) if entries else None
        self.pacer = pacer or PrefillPacer(batch=budget, floor=budget, stretch=2.0)  # `budget` tokens a step
        self.planner = Planner(self.ledger, self.cache, cells=cells, slots=slots, pacer=self.pacer)
        self.planner_cells = cells
        self._next_token = 10_000

    def submit(self, tokens: list[int], scope: str = "", priority: Priority = Priority.INTERACTIVE) -> KvSequence:
        request = GenerationRequest("r", "m", "p", 4, cache_scope=scope, priority=priority)
        seq = KvSequence(request, tokens=list(tokens))
        self.planner.enqueue(seq)
        return seq

    def step(self) -> list[tuple[KvSequence, int]]:
        """Plan a step, decode it, and sample every sequence it completed (a fresh token each)."""
        work = self.planner.plan()
        assert sum(count for _, count in work) <= self.planner_cells - self.ledger.used  # never past the free cells
        for seq, count in work:
            assert seq.kv is not None
            self.memory.decode(seq.kv.seq_id, seq.cached, count)
        self.planner.decoded(work)
        for seq, _ in work:
            if seq.uncached == 0:
                seq.sampled = True
                seq.tokens.append(self._next_token)
                self._next_token += 1
        assert self.ledger.used == len(self.memory.cells)  # the ledger never drifts from the cache
        return work


def prompt(first: int, length: int) -> list[int]:
    """`length` distinct tokens from `first`."""
    return list(range(first, first + length))


# -- admission --------------------------------------------------------------------------------------------------------


def test_admission_is_in_arrival_order_so_a_long_prompt_is_never_overtaken() -> None:
    sim = Cache(64, entries=0)
    holder = sim.submit(prompt(0, 30))
    assert sim.planner.admit() == [holder]
    sim.step()
    sim.step()  # 30 prompt cells, then one sampled token
    long = sim.submit(prompt(100, 40))  # 30 held + 40 + spares > 64: it waits
    short = sim.submit(prompt(200, 4))  # would fit at once, but came later
    assert sim.planner.admit() == []
    assert list(sim.planner.pending) == [long, short]
    assert long.arrival < short.arrival
    sim.planner.release(holder)
    assert sim.planner.admit() == [long, short]  # both fit once the holder is gone, in order
    assert sim.planner.running == [long, short]


def test_admission_stops_at_the_slots() -> None:
    sim = Cache(1000, slots=2, entries=0)
    seqs = [sim.submit(prompt(100 * i, 10)) for i in range(3)]
    assert sim.planner.admit() == seqs[:2]
    assert list(sim.planner.pending) == seqs[2:]


def test_room_for_admission_counts_the_running_ones_tokens_to_come_and_a_spare_cell_each() -> None:
    sim = Cache(50, entries=0)
    first = sim.submit(prompt(0, 20))
    assert sim.planner.admit() == [first]  # nothing decoded yet: its 20 tokens are still to come
    second = sim.submit(prompt(100, 29))
    assert sim.planner.admit() == []  # 20 to come + 29 + a spare for each of the two = 51: one too many
    sim.planner.release(first)
    assert sim.planner.admit() == [second]


# -- eviction before preemption; preemption of the newest -------------------------------------------------------------


def test_cached_prefixes_are_evicted_before_the_newest_running_sequence_is_preempted() -> None:
    sim = Cache(64, budget=64)
    done = sim.submit(prompt(500, 20))
    sim.planner.admit()
    sim.step()
    sim.planner.release(done)  # its 20 cells stay, as a cached prefix
    assert sim.cache is not None
    assert len(sim.cache) == 1
    older, newer = sim.submit(prompt(0, 20)), sim.submit(prompt(100, 20))
    assert sim.planner.admit() == [older, newer]
    sim.step()  # both prefilled: 20 cached + 40 held
    sim.step()
    sim.step()  # 64 cells used: the next step needs room
    assert sim.ledger.used == 64
    sim.step()
    assert len(sim.cache) == 0  # the cached prefix went first
    assert sim.planner.running == [older, newer]
    while newer in sim.planner.running:
        sim.step()
    assert list(sim.planner.pending) == [newer]  # then the newest running one, never the oldest
    assert sim.planner.running == [older]
    assert newer.kv is None
    assert newer.tokens[:20] == prompt(100, 20)  # its tokens are kept: a new prefill resumes it
    assert newer.reused == 0


def test_a_preempted_sequence_resumes_by_prefilling_everything_it_had() -> None:
    sim = Cache(48, budget=48, entries=0)
    older, newer = sim.submit(prompt(0, 20)), sim.submit(prompt(100, 20))
    sim.planner.admit()
    while newer in sim.planner.running:
        sim.step()
    had = len(newer.tokens)
    sim.planner.release(older)
    assert sim.planner.admit() == [newer]
    assert newer.uncached == had  # prompt and output so far, all fed again
    work = sim.step()
    assert work == [(newer, had)]


def test_the_oldest_running_sequence_is_never_preempted_for_another() -> None:
    sim = Cache(24, budget=24, entries=0)
    alone = sim.submit(prompt(0, 20))
    sim.planner.admit()
    while sim.ledger.used < 24:
        sim.step()
    assert sim.planner.plan() == [(alone, 1)]  # no room, yet it keeps its place: the request limit makes it fit
    assert sim.planner.running == [alone]
    assert not sim.planner.no_room()  # were llama.cpp to find no room, nothing else could be freed for it


def test_batch_work_is_preempted_before_newer_interactive_work_and_the_oldest_never() -> None:
    sim = Cache(48, slots=3, budget=48, entries=0)
    oldest = sim.submit(prompt(0, 12), priority=Priority.BATCH)
    batch = sim.submit(prompt(100, 12), priority=Priority.BATCH)
    chat = sim.submit(prompt(200, 12))
    assert sim.planner.admit() == [oldest, batch, chat]
    while batch in sim.planner.running:
        sim.step()
    assert list(sim.planner.pending) == [batch]  # the newest batch one, not the newer interactive one
    assert sim.planner.running == [oldest, chat]
    while chat in sim.planner.running:  # no batch left beside the oldest: the newest goes, the oldest stays
        sim.step()
    assert sim.planner.running == [oldest]
    assert list(sim.planner.pending) == [chat, batch]


def test_cells_in_use_leave_out_what_only_the_prefix_cache_keeps() -> None:
    sim = Cache(200)
    done = sim.submit(prompt(500, 20))
    sim.planner.admit()
    while not done.sampled:
        sim.step()
    assert sim.planner.cells_in_use() == sim.ledger.used == 20
    sim.planner.release(done)  # kept whole as a cached prefix: room to a router
    assert sim.ledger.used == 20
    assert sim.planner.cells_in_use() == 0
    reader = sim.submit([*prompt(500, 12), *prompt(900, 4)])  # shares 12 of the entry's cells
    sim.planner.admit()
    sim.step()
    assert reader.reused == 12
    assert sim.planner.cells_in_use() == sim.ledger.used == 24  # the entry it reads counts whole (errs high)
    sim.planner.release(reader)


def test_when_llama_cpp_finds_no_room_a_cached_prefix_goes_then_the_newest_is_preempted() -> None:
    sim = Cache(200)
    done = sim.submit(prompt(500, 20))
    sim.planner.admit()
    sim.step()
    sim.planner.release(done)
    older, newer = sim.submit(prompt(0, 10)), sim.submit(prompt(100, 10))
    sim.planner.admit()
    assert sim.planner.no_room()
    assert sim.cache is not None
    assert len(sim.cache) == 0
    assert sim.planner.running == [older, newer]
    assert sim.planner.no_room()
    assert sim.planner.running == [older]
    assert list(sim.planner.pending) == [newer]
    assert not sim.planner.no_room()  # one sequence alone: nothing left to free for it


def test_when_llama_cpp_finds_no_room_batch_work_goes_before_newer_interactive_work() -> None:
    sim = Cache(200, slots=3, entries=0)
    oldest = sim.submit(prompt(0, 10))
    batch = sim.submit(prompt(100, 10), priority=Priority.BATCH)
    chat = sim.submit(prompt(200, 10))
    assert sim.planner.admit() == [oldest, batch, chat]
    assert sim.planner.no_room()  # no cache to evict from: a running sequence goes, the batch one
    assert sim.planner.running == [oldest, chat]
    assert list(sim.planner.pending) == [batch]
    assert sim.planner.no_room()  # no batch left: the newest
    assert sim.planner.running == [oldest]
    assert list(sim.planner.pending) == [chat, batch]


# -- prefix sharing, within a cache scope -----------------------------------------------------------------------------

MEMO = prompt(0, 20)


def test_a_cached_prefix_is_shared_only_with_requests_of_its_scope() -> None:
    sim = Cache(500, budget=64)
    first = sim.submit(MEMO, "tenant:a")
    sim.planner.admit()
    sim.step()
    sim.planner.release(first)
    other = sim.submit([*MEMO, 7], "tenant:b")
    own = sim.submit([*MEMO, 8], "tenant:a")
    sim.planner.admit()
    assert other.kv is not None
    assert own.kv is not None
    assert (other.kv.shared, other.reused) == (0, 0)
    assert (own.kv.shared, own.reused) == (20, 20)
    assert dict(sim.step())[own] == 1  # only its last prompt token is computed


def test_a_resumed_sequence_takes_shared_cells_but_reports_only_its_first_passs_reuse() -> None:
    sim = Cache(500, budget=64)
    first = sim.submit(MEMO)
    sim.planner.admit()
    sim.step()
    sim.planner.release(first)
    resumed = sim.submit([*MEMO, 5, 6])
    resumed.sampled = True  # as after a preemption: its output so far is part of its tokens
    sim.planner.admit()
    assert resumed.kv is not None
    assert resumed.kv.shared == 20  # the cells are taken all the same
    assert resumed.reused == 0  # usage counts what the prompt's first pass reused


def test_a_running_sequences_cells_are_shared_only_within_its_scope() -> None:
    sim = Cache(500, budget=64)
    running = sim.submit(MEMO, "group:x")
    sim.planner.admit()
    sim.step()
    other = sim.submit([*MEMO, 7], "tenant:b")
    grouped = sim.submit([*MEMO, 8], "group:x")
    sim.planner.admit()
    assert other.kv is not None
    assert grouped.kv is not None
    assert other.kv.shared == 0
    assert grouped.kv.base is running.kv
    assert grouped.kv.shared == 20


def test_a_prefix_shorter_than_the_minimum_is_not_shared() -> None:
    sim = Cache(500)
    first = sim.submit(prompt(0, MIN_SHARED_TOKENS - 1))
    sim.planner.admit()
    sim.step()
    sim.planner.release(first)
    second = sim.submit([*prompt(0, MIN_SHARED_TOKENS - 1), 9, 9])
    sim.planner.admit()
    assert second.kv is not None
    assert second.kv.shared == 0


def test_a_sequence_waits_for_an_older_prefill_of_its_prefix_in_its_scope_only() -> None:
    sim = Cache(500, budget=32)
    long = prompt(0, 40)
    older = sim.submit(long, "tenant:a")
    sim.planner.admit()
    sim.step()  # 32 of its 40 prompt tokens
    same = sim.submit([*long, 1], "tenant:a")
    stranger = sim.submit([*long, 2], "tenant:b")
    sim.planner.admit()
    work = dict(sim.step())
    assert same not in work  # waits for the older one's cells rather than computing them twice
    assert stranger in work  # never waits on (nor learns of) another scope's prefill
    assert stranger.kv is not None
    assert stranger.kv.shared == 0
    while older.uncached > 1:
        sim.step()
    work = dict(sim.step())
    assert same.kv is not None
    assert same.kv.shared == 40  # seeded with the older one's whole prompt once it was there
    assert work[same] == 1  # and computes only its own last token
    assert same.reused == 40
    assert stranger.reused == 0


# -- each step's budget -----------------------------------------------------------------------------------------------


def test_a_step_decodes_every_sampled_sequence_and_splits_the_prefill_budget() -> None:
    sim = Cache(1000, slots=4, budget=16, entries=0)
    decoding = sim.submit(prompt(0, 4))
    sim.planner.admit()
    sim.step()  # its prompt in one step: it samples and decodes from now on
    oldest, short, middle = sim.submit(prompt(100, 100)), sim.submit(prompt(300, 5)), sim.submit(prompt(400, 30))
    sim.planner.admit()
    work = sim.planner.plan()
    assert work[0] == (decoding, 1)  # decodes first
    assert work[1:] == [(oldest, 4), (short, 5), (middle, 7)]  # a floor for the oldest, then shortest first


def test_decodes_go_in_sequence_id_order_whatever_the_order_they_arrived_in() -> None:
    sim = Cache(1000, slots=3, entries=0)
    first, second, third = (sim.submit(prompt(100 * i, 4)) for i in range(3))
    sim.planner.admit()
    sim.step()
    sim.planner.release(first)  # its id goes back to the ledger and the next arrival takes it
    fourth = sim.submit(prompt(500, 4))
    sim.planner.admit()
    assert sim.planner.running == [second, third, fourth]
    sim.step()
    assert fourth.kv is not None
    assert second.kv is not None
    assert fourth.kv.seq_id < second.kv.seq_id  # arrival order and id order now differ
    work = sim.step()
    assert [seq for seq, _ in work] == sorted([second, third, fourth], key=lambda seq: seq.kv.seq_id)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("wants", "budget", "grants"),
    [
        ([10, 500, 12], 128, [10, 106, 12]),  # short prompts finish beside a long one
        ([500, 10, 12], 128, [106, 10, 12]),  # behind an older long one too, which still advances
        ([500, 500, 500], 128, [128, 0, 0]),  # equal prompts one after another: the first one's token comes early
        ([5, 6], 128, [5, 6]),  # everything fits
        ([500, 20, 20, 20, 20, 20, 20], 128, [32, 20, 20, 20, 20, 16, 0]),  # the oldest keeps its floor
        ([], 128, []),
    ],
)
def test_the_prefill_budget_goes_shortest_first_with_a_floor_for_the_oldest(
    wants: list[int], budget: int, grants: list[int]
) -> None:
    assert share_budget(wants, budget) == grants
    assert sum(grants) == min(budget, sum(wants))


# -- the prefill policy (pacing.PrefillPacer): a large batch, a bounded chunk beside decodes, no starvation -----------


def paced(*, batch: int = 512, floor: int = 8) -> PrefillPacer:
    """A pacer that measured 1 decode alone at 40 ms and 100 prompt tokens adding 50 ms beside it (80 a step at 2x)."""
    pacer = PrefillPacer(batch=batch, floor=floor, stretch=2.0, smoothing=1.0)
    pacer.observe(1, 0, 0.040)
    pacer.observe(1, 100, 0.090)
    return pacer


def test_with_nothing_decoding_one_step_prefills_several_waiting_prompts_up_to_the_batch() -> None:
    sim = Cache(4096, slots=8, entries=0, pacer=paced(batch=512))
    prompts = [sim.submit(prompt(1000 * i, 150)) for i in range(5)]
    sim.planner.admit()
    work = sim.step()
    assert sum(count for _, count in work) == 512  # one llama_decode across the waiting prompts
    assert [count for _, count in work] == [150, 150, 150, 62]  # the oldest whole first, arrival order on ties
    assert all(seq.sampled for seq in prompts[:3])  # their first tokens come out of this step


def test_beside_a_running_decode_the_prefill_chunk_is_what_the_gap_bound_leaves() -> None:
    sim = Cache(4096, slots=8, entries=0, pacer=paced(batch=512))
    decoding = sim.submit(prompt(0, 10))
    sim.planner.admit()
    sim.step()
    assert decoding.sampled
    waiting = [sim.submit(prompt(1000 * i, 300)) for i in (1, 2)]
    sim.planner.admit()
    work = sim.planner.plan()
    assert work[0] == (decoding, 1)
    assert sum(count for _, count in work[1:]) == 80  # 40 ms of room at 0.5 ms a token, not the 512 batch
    assert [seq for seq, _ in work[1:]] == waiting[:1]  # equal prompts: the oldest takes it all, its token comes first
    sim.planner.release(decoding)
    assert sum(count for _, count in sim.planner.plan()) == 512  # the decode gone, the whole batch again


def test_slower_steps_shrink_the_chunk_down_to_the_floor_but_never_below() -> None:
    pacer = paced(floor=24)
    sim = Cache(4096, slots=8, entries=0, pacer=pacer)
    decoding = sim.submit(prompt(0, 10))
    sim.planner.admit()
    sim.step()
    sim.submit(prompt(1000, 400))
    sim.planner.admit()
    chunks = []
    for _ in range(4):
        work = sim.step()
        chunk = sum(count for seq, count in work if seq is not decoding)
        chunks.append(chunk)
        pacer.observe(1, chunk, 0.040 + chunk * 0.004)  # a prompt token costs 8 times what was measured
    assert chunks[0] == 80
    assert chunks == sorted(chunks, reverse=True)
    assert chunks[-1] == 24  # 10 tokens would keep the bound; the floor keeps the prompt moving


def test_beside_batch_decodes_alone_a_step_prefills_the_whole_batch() -> None:
    sim = Cache(4096, slots=8, entries=0, pacer=paced(batch=512))
    decoding = sim.submit(prompt(0, 10), priority=Priority.BATCH)
    sim.planner.admit()
    sim.step()
    assert decoding.sampled
    waiting = sim.submit(prompt(1000, 600))
    sim.planner.admit()
    work = sim.planner.plan()
    assert work == [(decoding, 1), (waiting, 512)]  # no latency-sensitive decode runs: the batch, not the 80 bound
    interactive = sim.submit(prompt(2000, 10))
    sim.planner.admit()
    sim.planner.plan()
    sim.step()  # the interactive prompt's whole prefill fits this step's prompt tokens: it decodes from now on
    assert interactive.sampled
    assert sum(count for seq, count in sim.planner.plan() if seq.prefilling) == 80  # its gaps are bounded again
    sim.pacer.observe(2, 0, 0.060)  # two decodes take 60 ms, one 40: the batch decode's 20 ms count against the room
    assert sum(count for seq, count in sim.planner.plan() if seq.prefilling) == 40  # 2 x 40 - 60 ms at 0.5 ms


def batch_prompt_beside_a_decode() -> tuple[Cache, KvSequence]:
    """An interactive request decoding (floor 24, 80 tokens a step within the bound) and a 400-token batch prompt."""
    sim = Cache(4096, slots=8, entries=0, pacer=paced(floor=24))
    sim.submit(prompt(0, 10))
    sim.planner.admit()
    sim.step()
    batch = sim.submit(prompt(1000, 400), priority=Priority.BATCH)
    sim.planner.admit()
    return sim, batch


def test_batch_prompts_beside_interactive_decodes_get_the_gap_bound_without_the_floor() -> None:
    sim, batch = batch_prompt_beside_a_decode()
    pacer = sim.pacer
    pacer.observe(1, 80, 0.040 + 80 * 0.004)  # a prompt token costs 8 times what was measured: 10 keep the bound
    assert sum(count for seq, count in sim.planner.plan() if seq is batch) < 24  # below the interactive floor
    fed = 0
    for _ in range(200):  # never starved: it advances every step until it decodes
        fed += sum(count for seq, count in sim.step() if seq is batch)
        if batch.sampled:
            break
        pacer.observe(1, 10, 0.040 + 10 * 0.004)
    assert batch.sampled
    assert fed == 400
    interactive = sim.submit(prompt(2000, 400))
    sim.planner.admit()
    assert sum(count for seq, count in sim.planner.plan() if seq is interactive) == 24  # the floor holds for it


def test_the_floor_is_granted_to_interactive_prompts_only_batch_ones_keep_to_what_the_bound_leaves() -> None:
    sim, batch = batch_prompt_beside_a_decode()
    pacer = sim.pacer
    sim.step()
    pacer.observe(1, 10, 0.040 + 10 * 0.004)  # 4 ms a prompt token: the bound leaves 10 tokens a step
    chat = sim.submit(prompt(2000, 20))  # an interactive prompt arrives while the batch one prefills
    sim.planner.admit()
    work = dict(sim.planner.plan())
    assert work[chat] == 20  # all of it, within its floor of 24
    assert work[batch] == 1  # the bound is spent: a token, not a share of the interactive floor
    sim.step()
    assert chat.sampled
    assert dict(sim.planner.plan())[batch] == 10  # the bound alone again


def test_a_long_prompt_is_not_starved_by_decodes_and_short_prompts_that_keep_coming() -> None:
    pacer = PrefillPacer(batch=512, floor=8, stretch=2.0, smoothing=1.0)
    pacer.observe(1, 0, 0.040)
    pacer.observe(1, 100, 0.040 + 100 * 0.010)  # 10 ms a prompt token: the bound leaves 4 a step, the floor 8
    sim = Cache(100_000, slots=5, entries=0, pacer=pacer)
    chat = sim.submit(prompt(50_000, 5))  # decodes the whole time
    sim.planner.admit()
    sim.step()
    long = sim.submit(prompt(0, 1000))
    sim.planner.admit()
    made = [sim.submit(prompt(10_000 + 100 * i, 30)) for i in range(3)]
    sim.planner.admit()
    steps, next_prompt, cached = 0, 100, long.cached
    while not long.sampled:
        sim.step()
        steps += 1
        assert long.cached > cached  # it advances every step, beside the decodes and the newer prompts
        cached = long.cached
        for seq in [seq for seq in sim.planner.running if seq not in (long, chat) and len(seq.tokens) >= 33]:
            sim.planner.release(seq)  # three tokens each, then a new short prompt takes its slot
            made.append(sim.submit(prompt(10_000 + 100 * next_prompt, 30)))
            next_prompt += 1
        sim.planner.admit()
        assert steps <= 1000 // 2 + 1  # the oldest prompt's quarter of the floor at least: 2 tokens a step
    assert steps > 100  # it took the slow way: 2-8 tokens a step
    assert len(made) > 50  # while short requests came and went the whole time


# -- cancellation and the end ----------------------------------------------------------------------------------------


def one_running_one_queued() -> tuple[Cache, KvSequence, KvSequence]:
    sim = Cache(500, slots=1)
    running = sim.submit(MEMO)
    queued = sim.submit(prompt(100, 10))
    sim.planner.admit()
    sim.step()
    return sim, running, queued


def test_cancelled_sequences_leave_at_once_and_a_running_ones_cells_are_cached() -> None:
    sim, running, queued = one_running_one_queued()
    running.cancelled = queued.cancelled = True
    assert sim.planner.drop_cancelled() == [queued, running]
    assert not sim.planner.running
    assert not sim.planner.pending
    assert sim.cache is not None
    assert len(sim.cache) == 1  # what the cancelled request computed serves the next one of its scope


def test_drain_empties_both_lists_and_caches_nothing() -> None:
    sim, running, queued = one_running_one_queued()
    assert sim.planner.drain() == [running, queued]
    assert sim.ledger.used == len(sim.memory.cells) == 0
    assert sim.cache is not None
    assert len(sim.cache) == 0
