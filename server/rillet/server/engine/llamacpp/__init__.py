"""The llamacpp CPU engine: a GGUF model on llama.cpp, run by Rillet's own continuous-batching step loop.

Its parts, each owning one invariant (docs/architecture.md draws the whole server):
- `settings`: what the settings resolve to before a model is loaded (served name, slots, tokens per sequence);
- `governor`: llama.cpp's thread count from how busy other processes keep the cores;
- `handoff`: the event loop ↔ engine thread hand-off (mailbox in, per-loop outbox out, one lock);
- `model`: the GGUF loaded, its chat template probed, its context sized, prompts tokenized and checked;
- `kvshare`: the ledger of KV cells shared between sequences, and the prefix cache;
- `planner`: admission, KV room, prefix sharing, each step's batch and preemption, pure over the ledger;
- `sampling`: a request's sampler, its seed, logprobs;
- `guide`: output constraints: llguidance's tokenizer of the GGUF's vocabulary, a sequence's token mask;
- `worker`: the engine thread's step loop (decode, sample, decode text, deliver);
- `engine`: the TextEngine seam (start, streams, close, death);
- `native`: typed ctypes wrappers over llama.cpp's C API.
Only `native` (imported by the engine thread when it loads a model) needs llama.cpp.
"""

from __future__ import annotations

from rillet.server.engine.llamacpp.engine import CAPABILITIES, ENGINE_NAME, LlamaCppEngine
from rillet.server.engine.llamacpp.governor import CpuSample, ThreadGovernor, read_cpu_sample
from rillet.server.engine.llamacpp.handoff import coalesce
from rillet.server.engine.llamacpp.model import resolve_model_path
from rillet.server.engine.llamacpp.planner import share_budget
from rillet.server.engine.llamacpp.sampling import sampler_seed, token_logprobs
from rillet.server.engine.llamacpp.settings import (
    MAX_AUTO_SLOTS,
    MIN_CELLS_PER_SLOT,
    context_limit,
    resolve_model_name,
    resolve_slots,
)

__all__ = [
    "CAPABILITIES",
    "ENGINE_NAME",
    "MAX_AUTO_SLOTS",
    "MIN_CELLS_PER_SLOT",
    "CpuSample",
    "LlamaCppEngine",
    "ThreadGovernor",
    "coalesce",
    "context_limit",
    "read_cpu_sample",
    "resolve_model_name",
    "resolve_model_path",
    "resolve_slots",
    "sampler_seed",
    "share_budget",
    "token_logprobs",
]
