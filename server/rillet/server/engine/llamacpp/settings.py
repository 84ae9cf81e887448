"""What the llamacpp settings resolve to before a model is loaded: the served name, the slots, tokens per sequence."""

from __future__ import annotations

from pathlib import Path

from rillet.server.config import LlamaCppConfig

__all__ = ["MAX_AUTO_SLOTS", "MIN_CELLS_PER_SLOT", "context_limit", "resolve_model_name", "resolve_slots"]

MIN_CELLS_PER_SLOT = 256
"""With `slots=0`, one slot per this many KV cells: room for a typical prompt and answer per running sequence."""
MAX_AUTO_SLOTS = 32
"""With `slots=0`, at most this many slots: past it a CPU decode step grows long enough to hurt inter-token latency
more than the extra sequences gain (each row of a 262k-vocabulary model costs its own output projection)."""


def resolve_model_name(config: LlamaCppConfig) -> str:
    """The served model name: `model_name` when given, else the GGUF file's stem, else the packaged default."""
    if config.model_path is not None and "model_name" not in config.model_fields_set:
        return Path(config.model_path).stem
    return config.model_name


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
