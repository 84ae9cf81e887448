"""Mirror of `tensorrt_llm/llmapi/llm.py` (1.2.1): `LLM` (the PyTorch backend), `generate_async`, `RequestOutput`.

What follows the real code: the constructor signature and its keyword check (ValueError "<class> got invalid
argument: <key>" for anything that is not a TorchLlmArgs field); the multi-GPU check against the GPUs of *this node*
(`get_device_count() < parallel_config.world_size_per_node`, skipped when RAY_LOCAL_WORLD_SIZE is set); the model's
`config.json` and `generation_config.json` kept as `_hf_model_config` / `_generation_config`; `generate_async`'s
signature (a sync method returning a RequestOutput at once; "LLM is shutting down" RuntimeError after shutdown; the
cache salt hashed to `cache_salt_id`), `_prepare_sampling_params` (`_setup` with the tokenizer, the model config and
the generation config when end_id is unset, so the generation config's extra EOS ids become stop token ids),
`_check_arguments` on the PyTorch backend (RequestError when the prompt exceeds max_num_tokens without chunked
prefill; no max_seq_len check there), `get_stats_async` (the executor's `aget_stats`), `tokenizer`, `shutdown`,
`_check_health` (not shut down: a worker that died is not seen there until its error is handled) and the context
manager. The model, the worker and the GPU are simulated.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tensorrt_llm._double import SIMULATION
from tensorrt_llm._double.tokenizer import EOS, EOT, VOCAB_SIZE, ByteTokenizer
from tensorrt_llm.executor.executor import get_cache_salt_id
from tensorrt_llm.executor.proxy import GenerationExecutorProxy
from tensorrt_llm.executor.result import DetokenizedGenerationResultBase, GenerationResult, IterationResult
from tensorrt_llm.executor.utils import RequestError
from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
from tensorrt_llm.llmapi.tokenizer import TokenizerBase, TransformersTokenizer
from tensorrt_llm.llmapi.utils import get_device_count
from tensorrt_llm.sampling_params import SamplingParams

PromptInputs = str | list[int] | Mapping[str, Any]


@dataclass
class _ModelConfig:
    """NOT a mirror: the simulated model's `config.json` (a transformers PretrainedConfig in the real one)."""

    vocab_size: int


@dataclass
class _GenerationConfig:
    """NOT a mirror: the simulated model's `generation_config.json`: EOS and an end-of-turn token, as Llama 3's."""

    eos_token_id: list[int]


class RequestOutput(DetokenizedGenerationResultBase, GenerationResult):
    """The output data of a completion request to the LLM (built by `_from_generation_result`, never directly)."""

    _prompt: str | None

    def __init__(self) -> None:
        raise RuntimeError(
            f"{self.__class__.__name__} is designed to be instantiated using {self.__class__.__name__}."
            "_from_generation_result by GenerationExecutor. "
            f"Users are not expected to create {self.__class__.__name__} directly."
        )

    @classmethod
    def _from_generation_result(
        cls, generation_result: GenerationResult, prompt: str | None = None, tokenizer: TokenizerBase | None = None
    ) -> RequestOutput:
        inst = cls.__new__(cls)
        inst.__dict__.update(generation_result.__dict__)
        inst.tokenizer = tokenizer
        inst._streaming = generation_result._streaming
        inst._prompt = prompt
        return inst

    @property
    def prompt(self) -> str | None:
        return self._prompt


class BaseLLM:
    """The base class for all LLM classes."""

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | Path | TokenizerBase | None = None,
        tokenizer_mode: Literal["auto", "slow"] = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._executor: GenerationExecutorProxy | None = None
        valid_keys = set(TorchLlmArgs.model_fields) | {"_mpi_session", "backend"}
        for key in kwargs:
            if key not in valid_keys:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        self.args = TorchLlmArgs.from_kwargs(
            model=str(model),
            tokenizer=tokenizer,
            tokenizer_mode=tokenizer_mode,
            skip_tokenizer_init=skip_tokenizer_init,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            revision=revision,
            tokenizer_revision=tokenizer_revision,
            **kwargs,
        )
        parallel = self.args.parallel_config
        if parallel.is_multi_gpu:  # noqa: SIM102  (the real code nests these)
            if os.getenv("RAY_LOCAL_WORLD_SIZE") is None and get_device_count() < parallel.world_size_per_node:
                raise RuntimeError(
                    f"Only {get_device_count()} GPUs are available, but {parallel.world_size} are required."
                )
        if get_device_count() == 0:  # the real one fails in CUDA initialisation; the message differs
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        if SIMULATION.load_error is not None:
            raise RuntimeError(SIMULATION.load_error)
        tokenizer = TransformersTokenizer(ByteTokenizer())
        self._tokenizer: TokenizerBase | None = None if self.args.skip_tokenizer_init else tokenizer
        self._hf_model_config = _ModelConfig(SIMULATION.model_vocab_size or VOCAB_SIZE)
        self._generation_config = _GenerationConfig([EOS, EOT])
        self._executor = GenerationExecutorProxy(self.args, EOS, self._hf_model_config.vocab_size, tokenizer)

    @property
    def llm_id(self) -> str:
        return "tensorrt-llm-double"

    @property
    def tokenizer(self) -> TokenizerBase | None:
        return self._tokenizer

    def generate_async(
        self,
        inputs: PromptInputs,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        trace_headers: Mapping[str, str] | None = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        """Generate output for the given prompt in the asynchronous mode (single prompt only)."""
        if self._executor is None or self._executor.is_shutdown():
            raise RuntimeError("LLM is shutting down")
        sampling_params = self._prepare_sampling_params(sampling_params)
        prompt: str | None
        if isinstance(inputs, str):
            prompt, token_ids = inputs, self._require_tokenizer().encode(inputs, add_special_tokens=True)
        elif isinstance(inputs, list):
            prompt, token_ids = None, list(inputs)
        elif "prompt_token_ids" in inputs:
            prompt, token_ids = None, list(inputs["prompt_token_ids"])
        elif "prompt" in inputs:
            prompt = inputs["prompt"]
            token_ids = self._require_tokenizer().encode(inputs["prompt"], add_special_tokens=True)
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        self._check_arguments(len(token_ids), 0, sampling_params, is_gen_only=False)
        result = self._executor.generate_async(
            token_ids,
            sampling_params=sampling_params,
            streaming=streaming,
            trace_headers=trace_headers,
            postproc_params=_postproc_params,
            cache_salt_id=get_cache_salt_id(cache_salt) if cache_salt is not None else None,
        )
        return RequestOutput._from_generation_result(result, prompt, self.tokenizer)

    def get_stats_async(self, timeout: float | None = 2) -> IterationResult | AsyncIterator[Any]:
        """Get iteration statistics from the runtime: an async iterable object containing runtime stats.

        (The real one returns `self._executor.aget_stats(timeout=timeout)` and fails with AttributeError after
        shutdown, its executor being None.)
        """
        assert self._executor is not None, "the LLM is shut down"
        return self._executor.aget_stats(timeout=timeout)

    def _require_tokenizer(self) -> TransformersTokenizer:
        tokenizer = self.tokenizer
        if not isinstance(tokenizer, TransformersTokenizer):
            raise ValueError("tokenizer is required for text prompts")
        return tokenizer

    def _prepare_sampling_params(self, sampling_params: SamplingParams | None = None) -> SamplingParams:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            if sampling_params.end_id is None:
                if self.tokenizer is None:
                    raise ValueError(
                        "tokenizer is required to reset end_id if it is None, or you can explicitly specify the "
                        "end_id for sampling_params"
                    )
                sampling_params._setup(self.tokenizer, self._hf_model_config, self._generation_config)
        else:
            raise TypeError(f"The sampling_params must be type SamplingParams or None, but got {type(sampling_params)}")
        if sampling_params._stream_interval is None:
            sampling_params._stream_interval = self.args.stream_interval
        sampling_params.return_perf_metrics = sampling_params.return_perf_metrics or self.args.return_perf_metrics
        return sampling_params

    def _check_arguments(
        self, prompt_len: int, query_len: int, sampling_params: SamplingParams, is_gen_only: bool
    ) -> None:
        if not self.args.enable_chunked_prefill and not is_gen_only:
            max_num_tokens = self.args.max_num_tokens
            if max_num_tokens and prompt_len / self.args.parallel_config.cp_size + query_len > max_num_tokens:
                raise RequestError(
                    f"The sum of prompt length ({prompt_len / self.args.parallel_config.cp_size}), query length "
                    f"({query_len}) should not exceed max_num_tokens ({max_num_tokens})"
                )

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _check_health(self) -> bool:
        return self._executor is not None and not self._executor.is_shutdown()

    def __enter__(self) -> BaseLLM:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        self.shutdown()
        return False


class _TorchLLM(BaseLLM):
    """LLM class is the main class for running a LLM model using PyTorch backend."""

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | Path | TokenizerBase | None = None,
        tokenizer_mode: Literal["auto", "slow"] = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        backend = kwargs.pop("backend", "pytorch")
        super().__init__(
            model,
            tokenizer,
            tokenizer_mode,
            skip_tokenizer_init,
            trust_remote_code,
            tensor_parallel_size,
            dtype,
            revision,
            tokenizer_revision,
            backend=backend,
            **kwargs,
        )


class LLM(_TorchLLM):
    """The LLM API entry point: `tensorrt_llm.LLM` on the PyTorch backend (TorchLlmArgs)."""


__all__: Sequence[str] = ["LLM", "RequestOutput"]
