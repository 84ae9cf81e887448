"""A unified KV cache as llama.cpp keeps it, simulated: what the ledger and the planner are tested against."""

from __future__ import annotations

from rillet.server.engine.llamacpp.kvshare import Holder, KvLedger


class FakeMemory:
    """A unified cache as llama.cpp keeps it: each cell a position and the set of sequence ids holding it."""

    def __init__(self) -> None:
        self.cells: list[tuple[int, set[int]]] = []

    def decode(self, seq_id: int, start: int, count: int) -> None:
        self.cells += [(pos, {seq_id}) for pos in range(start, start + count)]

    def copy_cells(self, src: int, dst: int, start: int, end: int) -> None:
        for pos, owners in self.cells:
            if src in owners and start <= pos < end:
                owners.add(dst)

    def remove_sequence(self, seq_id: int) -> None:
        for _, owners in self.cells:
            owners.discard(seq_id)
        self.cells = [cell for cell in self.cells if cell[1]]

    def positions(self, seq_id: int) -> list[int]:
        return sorted(pos for pos, owners in self.cells if seq_id in owners)


def decode(memory: FakeMemory, ledger: KvLedger, holder: Holder, count: int) -> None:
    """What a llama_decode of `count` tokens of `holder` at its next positions does, and the ledger's record of it."""
    memory.decode(holder.seq_id, holder.length, count)
    ledger.grow(holder, count)
