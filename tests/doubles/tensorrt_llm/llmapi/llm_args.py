"""Mirror of `tensorrt_llm/llmapi/llm_args.py` (1.2.1): the LLM arguments Rillet sets, as strict pydantic models.

`TorchLlmArgs` here carries a subset of the real fields (the ones FACTS.md lists, with the real defaults); the real
class has many more. Like the real models these forbid unknown fields, and `BaseLLM.__init__` rejects a keyword that
is not a field with ValueError("<class> got invalid argument: <key>"). `_ParallelConfig.world_size_per_node` and the
`gpus_per_node` validator follow the real code line for line (TODO comment included).
"""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from tensorrt_llm.llmapi.utils import get_device_count


class StrictBaseModel(BaseModel):
    """A base model that forbids arbitrary fields."""

    model_config = ConfigDict(extra="forbid")


class CapacitySchedulerPolicy(enum.StrEnum):
    MAX_UTILIZATION = "MAX_UTILIZATION"
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    STATIC_BATCH = "STATIC_BATCH"


class ContextChunkingPolicy(enum.StrEnum):
    """Context chunking policy."""

    FIRST_COME_FIRST_SERVED = "FIRST_COME_FIRST_SERVED"
    EQUAL_PROGRESS = "EQUAL_PROGRESS"


class SchedulerConfig(StrictBaseModel):
    capacity_scheduler_policy: CapacitySchedulerPolicy = CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    context_chunking_policy: ContextChunkingPolicy | None = None
    dynamic_batch_config: Any = None


class KvCacheConfig(StrictBaseModel):
    """KV cache settings (the real model has more fields; these carry the real 1.2.1 defaults)."""

    enable_block_reuse: bool = True
    max_tokens: int | None = None
    max_attention_window: list[int] | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = Field(default=0.9, ge=0, le=1)
    host_cache_size: int | None = None
    onboard_blocks: bool = True
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    event_buffer_max_size: int = 0
    dtype: str = "auto"
    tokens_per_block: int = 32


class SamplerType(enum.StrEnum):
    """The sampler the PyTorch executor uses: `auto` picks TorchSampler unless beam search is asked for."""

    TRTLLMSampler = "TRTLLMSampler"
    TorchSampler = "TorchSampler"
    auto = "auto"


@dataclass(frozen=True)
class _ParallelConfig:
    """The part of the real `_ParallelConfig` BaseLLM reads (`gpus_per_node` defaults to 8 there)."""

    tp_size: int
    pp_size: int
    cp_size: int = 1
    gpus_per_node: int = 8

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size * self.cp_size

    @property
    def world_size_per_node(self) -> int:
        world_size = self.world_size
        total_nodes = math.ceil(world_size / self.gpus_per_node)
        return world_size // total_nodes  # TODO is this right?  (the real comment)

    @property
    def is_multi_gpu(self) -> bool:
        return self.world_size > 1


class TorchLlmArgs(StrictBaseModel):
    """Arguments of the PyTorch-backend LLM (`LLM(...)` keywords), a subset with the real names and defaults."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str
    tokenizer: Any = None
    tokenizer_mode: Literal["auto", "slow"] = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    revision: str | None = None
    tokenizer_revision: str | None = None
    pipeline_parallel_size: int = 1
    context_parallel_size: int = 1
    gpus_per_node: int | None = Field(default=None, validate_default=True)  # the validator fills it from the GPUs
    sampler_type: str | SamplerType = SamplerType.auto
    otlp_traces_endpoint: str | None = None
    perf_metrics_max_requests: int = 0
    enable_attention_dp: bool = False
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)
    enable_chunked_prefill: bool = False
    guided_decoding_backend: Literal["xgrammar", "llguidance"] | None = None
    scheduler_config: SchedulerConfig = Field(default_factory=SchedulerConfig)
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_beam_width: int | None = None
    max_num_tokens: int | None = 8192
    gather_generation_logits: bool = False
    num_postprocess_workers: int = 0
    postprocess_tokenizer_dir: str | None = None
    return_perf_metrics: bool = False
    backend: str | None = None
    stream_interval: int = 1
    disable_overlap_scheduler: bool = False
    enable_iter_perf_stats: bool = False
    print_iter_log: bool = False

    @field_validator("gpus_per_node", mode="before")
    @classmethod
    def validate_gpus_per_node(cls, v: int | None, info: ValidationInfo) -> int | None:
        if os.getenv("RAY_LOCAL_WORLD_SIZE") is not None:
            tensor_parallel_size: int | None = info.data.get("tensor_parallel_size")
            return tensor_parallel_size
        if v is None:
            v = get_device_count()  # the real one: torch.cuda.device_count()
        return v

    @field_validator("sampler_type", mode="before")
    @classmethod
    def validate_sampler_type(cls, v: str | SamplerType) -> SamplerType:
        return SamplerType(v)  # ValueError for anything else

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TorchLlmArgs:
        return cls(**kwargs)

    @property
    def parallel_config(self) -> _ParallelConfig:
        return _ParallelConfig(
            self.tensor_parallel_size,
            self.pipeline_parallel_size,
            self.context_parallel_size,
            self.gpus_per_node if self.gpus_per_node is not None else 8,
        )
