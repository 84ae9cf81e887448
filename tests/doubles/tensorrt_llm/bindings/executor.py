"""Mirror of `tensorrt_llm.bindings.executor.FinishReason` (C++ `executor::FinishReason`, executor/types.h)."""

from __future__ import annotations

import enum


class FinishReason(enum.IntEnum):
    """Why the executor finished a sequence; `GenerationResultBase._handle_sequence` maps these to strings."""

    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5
