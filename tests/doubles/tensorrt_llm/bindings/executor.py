"""Mirror of `tensorrt_llm.bindings.executor` (C++ `executor/types.h`, bound in `nanobind/executor/request.cpp`).

`FinishReason`, `GuidedDecodingParams` (a guide type and its text, what the executor's guided decoder compiles),
and `RequestPerfMetrics` with its `TimingMetrics` (steady-clock time points, which the bindings turn
into `datetime.timedelta` since the clock's epoch; 0 when unset), `KvCacheMetrics` and `SpeculativeDecodingMetrics`,
field names as the bindings define them (`def_rw("arrival_time", ...)`, ...).
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field


class FinishReason(enum.IntEnum):
    """Why the executor finished a sequence; `GenerationResultBase._handle_sequence` maps these to strings."""

    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


class GuidedDecodingParams:
    """A request's guide as the executor receives it (`GuidedDecodingParams(guide_type, guide=None)`)."""

    class GuideType(enum.IntEnum):
        JSON = 0
        JSON_SCHEMA = 1
        REGEX = 2
        EBNF_GRAMMAR = 3
        STRUCTURAL_TAG = 4

    def __init__(self, guide_type: GuidedDecodingParams.GuideType, guide: str | None = None) -> None:
        self.guide_type = guide_type
        self.guide = guide


@dataclass
class TimingMetrics:
    """When the executor received, first scheduled, and produced the first and the last token of a request."""

    arrival_time: datetime.timedelta = datetime.timedelta(0)
    first_scheduled_time: datetime.timedelta = datetime.timedelta(0)
    first_token_time: datetime.timedelta = datetime.timedelta(0)
    last_token_time: datetime.timedelta = datetime.timedelta(0)
    kv_cache_transfer_start: datetime.timedelta = datetime.timedelta(0)
    kv_cache_transfer_end: datetime.timedelta = datetime.timedelta(0)
    kv_cache_size: int = 0


@dataclass
class KvCacheMetrics:
    """The request's KV blocks: allocated, newly allocated, reused from the prefix cache, missed."""

    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass
class SpeculativeDecodingMetrics:
    acceptance_rate: float = 0.0
    total_accepted_draft_tokens: int = 0
    total_draft_tokens: int = 0


@dataclass
class RequestPerfMetrics:
    """`CompletionOutput.request_perf_metrics` with `return_perf_metrics` on (trtllm-serve's /perf_metrics reads it)."""

    timing_metrics: TimingMetrics = field(default_factory=TimingMetrics)
    kv_cache_metrics: KvCacheMetrics = field(default_factory=KvCacheMetrics)
    speculative_decoding: SpeculativeDecodingMetrics = field(default_factory=SpeculativeDecodingMetrics)
    first_iter: int | None = None
    last_iter: int | None = None
    iter: int | None = None
