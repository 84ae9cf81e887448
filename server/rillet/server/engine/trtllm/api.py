"""What the trtllm engine takes from TensorRT-LLM: names, LLM keywords, GPUs, samplers, guides, health, KV use."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rillet.server.config import TrtllmConfig, TrtllmGuidedDecoding, TrtllmSampler
from rillet.server.engine.constraints import Checker, choice_lark
from rillet.server.errors import ConfigurationError
from rillet.server.types import SAMPLING_FIELDS, Constraint, ConstraintKind, TextCapabilities

if TYPE_CHECKING:  # the package is imported lazily: CPU installs never need it
    from tensorrt_llm import LLM
    from tensorrt_llm.executor.result import IterationResult
    from tensorrt_llm.sampling_params import GuidedDecodingParams, SamplingParams

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
    guided_decoding_params: type[GuidedDecodingParams]
    request_error: type[Exception]
    iteration_result: type[IterationResult]
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
        from tensorrt_llm.executor.result import IterationResult
        from tensorrt_llm.executor.utils import RequestError
        from tensorrt_llm.llmapi import CapacitySchedulerPolicy, KvCacheConfig, SchedulerConfig
        from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
        from tensorrt_llm.llmapi.utils import get_device_count
        from tensorrt_llm.sampling_params import GuidedDecodingParams
    except Exception as exc:  # ImportError, or the OSError/RuntimeError of a broken CUDA install
        raise ConfigurationError(f"{INSTALL_HELP} (import tensorrt_llm failed: {exc})") from exc
    template_error: type[Exception] = _NoTemplateError
    with contextlib.suppress(ImportError):  # what Hugging Face chat templates raise; TensorRT-LLM brings jinja2
        import jinja2.exceptions

        template_error = jinja2.exceptions.TemplateError
    return Api(
        version=tensorrt_llm.__version__,
        llm=tensorrt_llm.LLM,
        sampling_params=tensorrt_llm.SamplingParams,
        guided_decoding_params=GuidedDecodingParams,
        request_error=RequestError,
        iteration_result=IterationResult,
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
        "enable_iter_perf_stats",
        "stream_interval",
        "num_postprocess_workers",
        "postprocess_tokenizer_dir",
        "skip_tokenizer_init",
        "backend",
        "guided_decoding_backend",
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
        raise ConfigurationError(
            f"trtllm.extra_llm_args has keys TensorRT-LLM {api.version}'s LLM does not take: {', '.join(unknown)} "
            "(see TorchLlmArgs in its LLM API reference)",
        )
    owned = sorted(set(config.extra_llm_args) & TYPED_LLM_ARGS)
    if owned:
        raise ConfigurationError(
            f"trtllm.extra_llm_args sets {', '.join(owned)}, which the trtllm settings own: set trtllm.<field> instead",
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
        "enable_iter_perf_stats": config.enable_iter_perf_stats,
        "stream_interval": config.stream_interval,
        "num_postprocess_workers": config.num_postprocess_workers,
        # None builds no GuidedDecoder, and TensorRT-LLM then ignores a request's guide: the capabilities refuse them
        "guided_decoding_backend": None
        if config.guided_decoding_backend is TrtllmGuidedDecoding.NONE
        else config.guided_decoding_backend.value,
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
        raise ConfigurationError(f"no CUDA GPU is visible. {INSTALL_HELP}")
    world = config.tensor_parallel_size * config.pipeline_parallel_size
    per_node = int(config.extra_llm_args.get("gpus_per_node") or devices)
    need = world // math.ceil(world / per_node)
    if devices < need:
        nodes = math.ceil(world / per_node)
        raise ConfigurationError(
            f"only {devices} CUDA GPUs are visible, and tensor_parallel_size * pipeline_parallel_size = {world} over "
            f"{nodes} nodes of {per_node} GPUs needs {need} on this node. {INSTALL_HELP}",
        )


TORCH_SAMPLER_FIELDS = frozenset({"temperature", "top_p", "top_k"})
"""What 1.2's TorchSampler reads of a request (`UtilsSamplingParams`): not its seed, min_p or penalties."""


def capabilities(sampler: TrtllmSampler, *, guided: bool = False) -> TextCapabilities:
    """What a model honours under `sampler` (FACTS.md "Samplers"), and every constraint kind when `guided`.

    Constraints are listed only when a guided decoding backend is configured (`guided`): without one TensorRT-LLM
    would drop a request's guide silently, so every kind is refused.

    TorchSampler (`auto`) samples every request from one generator seeded once, so a request's seed plays no part;
    it reads temperature, top_p and top_k only; its logprobs are the distribution's top k, which under sampling can
    miss the token actually sampled, so they are honoured under greedy decoding only. TRTLLMSampler (the C++
    decoder) takes the request's whole SamplingConfig, seed included, but reports the sampled token's logprob alone
    and never alternatives, which `top_logprobs` promises.
    """
    constraints = frozenset(ConstraintKind) if guided else frozenset()
    if sampler is TrtllmSampler.TRTLLM:
        return TextCapabilities(
            sampling=frozenset(SAMPLING_FIELDS),
            reproducible_seed=True,
            logprobs=False,
            sampled_logprobs=False,
            constraints=constraints,
        )
    return TextCapabilities(
        sampling=TORCH_SAMPLER_FIELDS,
        reproducible_seed=False,
        logprobs=True,
        sampled_logprobs=False,
        constraints=constraints,
    )


def guided_decoding(config: TrtllmConfig) -> Checker | None:
    """The validator of constraints before submission, when a guided decoding backend is configured, else None.

    Rillet validates with llguidance in its own process, so llguidance must be importable here too (the trtllm extra
    installs it; NVIDIA's container may not have it): EngineDead saying so at construction otherwise.
    """
    if config.guided_decoding_backend is TrtllmGuidedDecoding.NONE:
        return None
    try:
        import llguidance  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "trtllm.guided_decoding_backend=llguidance needs the llguidance package in Rillet's environment: "
            'pip install "llguidance>=0.7.29,<2" (the trtllm extra has it), or set it to none',
        ) from exc
    return Checker()


def guide(constraint: Constraint) -> dict[str, Any]:
    """The GuidedDecodingParams keywords for a constraint, as TensorRT-LLM's llguidance backend compiles them.

    `_get_guided_decoding_params` (sampling_params.py) turns `json` into a JSON_SCHEMA guide, `json_object` into
    JSON (compiled as {"type": "object"}), `regex` into REGEX and `grammar` into a grammar guide that the llguidance
    backend reads as Lark (`grammar_matcher.py`); a choice, which has no field there, goes as its Lark grammar.
    """
    kind = constraint.kind
    if kind is ConstraintKind.JSON_SCHEMA:
        return {"json": constraint.text}
    if kind is ConstraintKind.JSON_OBJECT:
        return {"json_object": True}
    if kind is ConstraintKind.REGEX:
        return {"regex": constraint.text}
    if kind is ConstraintKind.GRAMMAR:
        return {"grammar": constraint.text}
    return {"grammar": choice_lark(constraint.choices)}


def kv_cache_usage(iteration: Mapping[str, Any]) -> float | None:
    """The share of KV cache blocks in use after one executor iteration, from its stats, or None without them.

    `LLM.get_stats_async` yields each iteration's `IterationStats` as `to_json_str` writes it: `kvCacheStats` holds the
    block manager's `usedNumBlocks` and `maxNumBlocks` (null when the executor has no KV cache manager).
    """
    kv = iteration.get("kvCacheStats")
    if not isinstance(kv, Mapping):
        return None
    used, total = kv.get("usedNumBlocks"), kv.get("maxNumBlocks")
    if not isinstance(used, int) or not isinstance(total, int) or total <= 0:
        return None
    return min(1.0, max(0.0, used / total))


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
