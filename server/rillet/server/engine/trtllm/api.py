"""What the trtllm engine takes from TensorRT-LLM: its names, the LLM keywords, GPUs per node, samplers, health."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rillet.server.config import TrtllmConfig, TrtllmSampler
from rillet.server.errors import EngineDead
from rillet.server.types import SAMPLING_FIELDS, TextCapabilities

if TYPE_CHECKING:  # the package is imported lazily: CPU installs never need it
    from tensorrt_llm import LLM
    from tensorrt_llm.sampling_params import SamplingParams

CONTAINER = "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
INSTALL_HELP = (
    "The trtllm engine runs TensorRT-LLM 1.2 on NVIDIA GPUs (Linux x86_64 with CUDA). Install it with "
    '`pip install --extra-index-url https://pypi.nvidia.com "rillet[trtllm]"` (NVIDIA publishes the wheels on its '
    'own index, pypi.nvidia.com; the "tensorrt-llm" name on PyPI only points there), or run Rillet in NVIDIA\'s '
    f"TensorRT-LLM release container {CONTAINER}, which has it: deploy/gpu/ builds that image and covers one GPU, "
    "several GPUs and several nodes. Without a GPU, serve the CPU engine instead: --text-engine llamacpp."
)
"""The paragraph `rillet serve --text-engine trtllm` prints when the engine cannot run here."""


class _NoTemplateError(Exception):
    """Stands in for jinja2's TemplateError where jinja2 is missing (then no chat template can raise it)."""


@dataclass(frozen=True, slots=True)
class Api:
    """The TensorRT-LLM names the engine uses, imported once when the engine is built."""

    version: str
    llm: type[LLM]
    sampling_params: type[SamplingParams]
    request_error: type[Exception]
    template_error: type[Exception]
    kv_cache_config: Callable[..., Any]
    scheduler_config: Callable[..., Any]
    capacity_policy: Callable[[str], Any]
    llm_fields: frozenset[str]
    device_count: Callable[[], int]


def import_api() -> Api:
    """Import TensorRT-LLM, or fail with the install paragraph (EngineDead: the server cannot start)."""
    try:
        import tensorrt_llm
        from tensorrt_llm.executor.utils import RequestError
        from tensorrt_llm.llmapi import CapacitySchedulerPolicy, KvCacheConfig, SchedulerConfig
        from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
        from tensorrt_llm.llmapi.utils import get_device_count
    except Exception as exc:  # ImportError, or the OSError/RuntimeError of a broken CUDA install
        raise EngineDead(f"{INSTALL_HELP} (import tensorrt_llm failed: {exc})", reason="ENGINE_UNAVAILABLE") from exc
    template_error: type[Exception] = _NoTemplateError
    with contextlib.suppress(ImportError):  # what Hugging Face chat templates raise; TensorRT-LLM brings jinja2
        import jinja2.exceptions

        template_error = jinja2.exceptions.TemplateError
    return Api(
        version=tensorrt_llm.__version__,
        llm=tensorrt_llm.LLM,
        sampling_params=tensorrt_llm.SamplingParams,
        request_error=RequestError,
        template_error=template_error,
        kv_cache_config=KvCacheConfig,
        scheduler_config=SchedulerConfig,
        capacity_policy=CapacitySchedulerPolicy,
        llm_fields=frozenset(TorchLlmArgs.model_fields),
        device_count=get_device_count,
    )


TYPED_LLM_ARGS = frozenset(
    {
        "model",
        "tokenizer",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "kv_cache_config",
        "scheduler_config",
        "enable_chunked_prefill",
        "sampler_type",
        "return_perf_metrics",
        "stream_interval",
        "num_postprocess_workers",
        "postprocess_tokenizer_dir",
        "skip_tokenizer_init",
        "backend",
    }
)
"""LLM keywords the typed config (or the engine itself) sets; `extra_llm_args` may not set them again."""


def llm_kwargs(config: TrtllmConfig, api: Api) -> dict[str, Any]:
    """The keywords for `LLM(...)`: the typed settings, then `extra_llm_args` checked against TorchLlmArgs.

    Unknown keys fail here, at startup, naming the key (TensorRT-LLM would raise the same ValueError later, after
    importing CUDA); a key the typed settings own fails too, so one knob has one place.
    """
    unknown = sorted(set(config.extra_llm_args) - api.llm_fields)
    if unknown:
        raise EngineDead(
            f"trtllm.extra_llm_args has keys TensorRT-LLM {api.version}'s LLM does not take: {', '.join(unknown)} "
            "(see TorchLlmArgs in its LLM API reference)",
            reason="ENGINE_CONFIG_INVALID",
        )
    owned = sorted(set(config.extra_llm_args) & TYPED_LLM_ARGS)
    if owned:
        raise EngineDead(
            f"trtllm.extra_llm_args sets {', '.join(owned)}, which the trtllm settings own: set trtllm.<field> instead",
            reason="ENGINE_CONFIG_INVALID",
        )
    kwargs: dict[str, Any] = {
        "model": config.model,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "max_batch_size": config.max_batch_size,
        "max_num_tokens": config.max_num_tokens,
        "max_seq_len": config.max_seq_len,
        "enable_chunked_prefill": config.enable_chunked_prefill,
        "kv_cache_config": api.kv_cache_config(
            free_gpu_memory_fraction=config.free_gpu_memory_fraction, enable_block_reuse=config.enable_block_reuse
        ),
        "scheduler_config": api.scheduler_config(
            capacity_scheduler_policy=api.capacity_policy(config.capacity_scheduler_policy.value)
        ),
        "sampler_type": config.sampler.value,
        "return_perf_metrics": config.return_perf_metrics,
        "stream_interval": config.stream_interval,
        "num_postprocess_workers": config.num_postprocess_workers,
    }
    if config.tokenizer is not None:
        kwargs["tokenizer"] = config.tokenizer
    if config.num_postprocess_workers:  # each worker loads the tokenizer itself
        kwargs["postprocess_tokenizer_dir"] = config.tokenizer or config.model
    return kwargs | config.extra_llm_args


def check_gpus(config: TrtllmConfig, devices: int) -> None:
    """Refuse to start without the GPUs this node needs, counted as TensorRT-LLM counts them; EngineDead otherwise.

    TensorRT-LLM (`BaseLLM.__init__`) compares the local GPUs with `world_size_per_node = world // ceil(world /
    gpus_per_node)`, where `gpus_per_node` defaults to the GPUs this node shows: a TP=16 launch over two nodes of 8
    needs 8 here, not 16. Under Ray (RAY_LOCAL_WORLD_SIZE set) the GPUs belong to Ray's workers and it checks nothing.
    """
    if os.getenv("RAY_LOCAL_WORLD_SIZE") is not None:
        return
    if devices == 0:
        raise EngineDead(f"no CUDA GPU is visible. {INSTALL_HELP}", reason="ENGINE_UNAVAILABLE")
    world = config.tensor_parallel_size * config.pipeline_parallel_size
    per_node = int(config.extra_llm_args.get("gpus_per_node") or devices)
    need = world // math.ceil(world / per_node)
    if devices < need:
        nodes = math.ceil(world / per_node)
        raise EngineDead(
            f"only {devices} CUDA GPUs are visible, and tensor_parallel_size * pipeline_parallel_size = {world} over "
            f"{nodes} nodes of {per_node} GPUs needs {need} on this node. {INSTALL_HELP}",
            reason="ENGINE_UNAVAILABLE",
        )


TORCH_SAMPLER_FIELDS = frozenset({"temperature", "top_p", "top_k"})
"""What 1.2's TorchSampler reads of a request (`UtilsSamplingParams`): not its seed, min_p or penalties."""


def capabilities(sampler: TrtllmSampler) -> TextCapabilities:
    """What a model honours under `sampler`, as TensorRT-LLM 1.2.1's samplers really behave (FACTS.md "Samplers").

    TorchSampler (`auto`) samples every request from one generator seeded once, so a request's seed plays no part;
    it reads temperature, top_p and top_k only; its logprobs are the distribution's top k, which under sampling can
    miss the token actually sampled, so they are honoured under greedy decoding only. TRTLLMSampler (the C++
    decoder) takes the request's whole SamplingConfig, seed included, but reports the sampled token's logprob alone
    and never alternatives, which `top_logprobs` promises.
    """
    if sampler is TrtllmSampler.TRTLLM:
        return TextCapabilities(
            sampling=frozenset(SAMPLING_FIELDS), reproducible_seed=True, logprobs=False, sampled_logprobs=False
        )
    return TextCapabilities(
        sampling=TORCH_SAMPLER_FIELDS, reproducible_seed=False, logprobs=True, sampled_logprobs=False
    )


def executor_failure(llm: LLM) -> str | None:
    """Why TensorRT-LLM's executor can serve nothing more, or None while it can.

    `LLM._check_health()` is False once the executor shut down. A worker process that died is not reflected there in
    1.2.1: the proxy only queues its exception (`mpi_done_callback` → `_error_queue`) for the next `submit`, and
    results in flight never hear of it. So the queue is read too, without taking from it.
    """
    if not llm._check_health():
        return "TensorRT-LLM's executor has shut down"
    errors = getattr(getattr(llm, "_executor", None), "_error_queue", None)
    if errors is None or errors.empty():
        return None
    queued = list(errors.queue)[:1]  # queue.Queue's own deque; a copy, as the proxy may take from it meanwhile
    return f"TensorRT-LLM's executor worker failed: {queued[0]!r}" if queued else None
