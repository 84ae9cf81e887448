"""NOT a mirror of TensorRT-LLM: the simulated GPU behind the double, and the knobs tests turn on it.

Everything under `tensorrt_llm._double` stands in for what the real package does on the GPU, in C++ or in its worker
process (the PyExecutor step loop and its samplers, the model, the Hugging Face tokenizer); everything outside it
mirrors a real module and cites it. Tests and the benchmarks change `SIMULATION` (a fresh one comes with every fresh
import of the double).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class Simulation:
    """What the simulated machine and model do; every field is a test's lever."""

    device_count: int = 1
    """GPUs `tensorrt_llm.llmapi.utils.get_device_count()` (and torch.cuda.device_count()) report on this node."""
    step_seconds: float = 0.001
    """Wall time of one executor iteration (one token for every running sequence, plus prefill chunks)."""
    kv_cache_tokens: int = 1 << 20
    """KV capacity in tokens; GUARANTEED_NO_EVICT admits a request only when prompt + max_tokens fit."""
    logprobs_format: Literal["dict", "float"] = "dict"
    """The shape of `CompletionOutput.logprobs`: top-k dicts of Logprob (PyTorch backend), or plain floats."""
    eos_after: int | None = None
    """The model emits its end token (the tokenizer's EOS, `end_id`) as the n-th generated token (0-based)."""
    eot_after: int | None = None
    """The model emits its end-of-turn token (an extra EOS of the generation config, Llama 3's <|eot_id|>) as the
    n-th generated token: a STOP_WORDS finish, the token cut from `token_ids` again."""
    request_error_after: int | None = None
    """After this many generated tokens the executor fails the request with an error response (RequestError)."""
    final_without_reason_after: int | None = None
    """After this many tokens the executor marks the response final with NOT_FINISHED (the real result raises)."""
    load_error: str | None = None
    """`LLM(...)` raises RuntimeError with this message (a model that cannot be loaded)."""
    chat_template: bool = True
    """Whether the tokenizer has a chat template (without one `apply_chat_template` raises ValueError)."""
    block_size: int = 32
    """KV block size for prefix reuse (`KvCacheConfig.tokens_per_block`'s default)."""
    model_vocab_size: int | None = None
    """The model's embedding rows (`config.json` vocab_size) when fewer than the tokenizer's ids: a prompt token at or
    past it is a CUDA device-side assert in the embedding lookup, which kills the worker."""
    cancel_steps: int = 3
    """Executor steps between `abort()` and the CANCELLED final response (the cancellation crosses the IPC queue and
    the PyExecutor acts on it at a later iteration); the request keeps generating meanwhile."""
    iteration_stats_before_release: bool = False
    """With `enable_iter_perf_stats`, take each iteration's stats before its finished requests free their KV blocks
    (the last stats before the executor idles then still show them held: 1.2.1's overlap scheduler may order it so)."""
    worker_death: BaseException | None = None
    """Set it and the worker process dies with this error at its next step: no response follows for any request,
    and the error waits in the proxy's error queue for the next `submit` (as `mpi_done_callback` queues it)."""


SIMULATION = Simulation()
