"""Typed wrappers over llama.cpp's C API (llama-cpp-python's ctypes bindings), used by the llamacpp engine thread."""

from __future__ import annotations

import ctypes
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp.llama_cpp as lib
import numpy as np
import numpy.typing as npt
from llama_cpp._ggml import libggml

from rillet.server.types import GREEDY_BELOW_TEMPERATURE

__all__ = [
    "ContextParams",
    "LlamaContext",
    "LlamaModel",
    "Sampler",
    "SamplerParams",
    "cpu_extra_buffer_types",
    "init_backend",
    "max_sequence_ids",
]

log = logging.getLogger(__name__)

_GGML_LOG_LEVEL_ERROR = 4
_RANDOM_SEED = 0xFFFFFFFF
"""llama.cpp's LLAMA_DEFAULT_SEED: the dist sampler picks a random seed when given this value."""
PENALTY_LAST_N = 64
"""How many recent tokens (prompt included) the repetition penalty looks at."""
_C_WHITESPACE = " \t\n\v\f\r"
"""What llama.cpp's chat templates trim from message content (C isspace)."""

_init_lock = threading.Lock()
_log_callback: object | None = None
"""The ctypes log callback handed to llama.cpp. Kept for the life of the process: llama.cpp keeps only the raw
pointer, and a collected callback crashes the process at the next log line."""


def _forward_log(level: int, text: bytes | None, _user_data: int | None) -> None:
    if not text:
        return
    if level == _GGML_LOG_LEVEL_ERROR:
        log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def init_backend() -> None:
    """Once per process: route llama.cpp's logs to Python logging (errors as errors, the rest at DEBUG) and init."""
    global _log_callback
    with _init_lock:
        if _log_callback is not None:
            return
        callback = lib.llama_log_callback(_forward_log)
        lib.llama_log_set(callback, ctypes.c_void_p(0))
        _log_callback = callback
        lib.llama_backend_init()


_GGML_BACKEND_DEVICE_TYPE_CPU = 0


def cpu_extra_buffer_types() -> tuple[str, ...]:
    """Names of the weight buffer types the CPU backend offers beyond plain memory (e.g. "AMX", "CPU_REPACK")."""
    libggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    libggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    libggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    libggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    libggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    libggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    libggml.ggml_backend_buft_name.restype = ctypes.c_char_p
    libggml.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    reg = libggml.ggml_backend_reg_by_name(b"CPU")
    device = libggml.ggml_backend_dev_by_type(_GGML_BACKEND_DEVICE_TYPE_CPU)
    address = libggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts") if reg else None
    if not address or not device:
        return ()
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    bufts = get_extra(device)
    names: list[str] = []
    while bufts and bufts[len(names)]:
        name: bytes = libggml.ggml_backend_buft_name(bufts[len(names)])
        names.append(name.decode())
    return tuple(names)


def _use_extra_buffer_types() -> bool:
    """False where the CPU backend would put weights in AMX buffers.

    Why: llama.cpp's AMX matrix multiply crashes the process (SIGSEGV in ggml_backend_amx_mul_mat) for any batch of
    more than one row with this Q4_K_M model, measured on a Sapphire Rapids host with a native build (llama.cpp issue
    #20824, open). llama.cpp can only turn extra buffer types off together, so CPU_REPACK goes too on such hosts.
    """
    offered = cpu_extra_buffer_types()
    if "AMX" in offered:
        log.warning("llama.cpp offers AMX weight buffers, which crash (llama.cpp#20824): extra buffer types are off")
        return False
    return True


class LlamaModel:
    """A loaded GGUF model and its vocabulary.

    The engine thread creates, uses and frees it. While it lives, other threads may call `tokenize`, `tokenize_chat`,
    `apply_chat_template` and `text` beside it (base.Tokenizing): llama.cpp's vocabulary is read-only after the load,
    its tokenizers keep their state in a per-call session, and these methods write only buffers of their own. `piece`
    (its cache) and the rest are the engine thread's alone.
    """

    def __init__(self, path: str, *, vocab_only: bool = False) -> None:
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.vocab_only = vocab_only
        params.use_extra_bufts = vocab_only or _use_extra_buffer_types()
        handle = lib.llama_model_load_from_file(path.encode(), params)
        if not handle:
            raise RuntimeError(f"llama.cpp could not load the model {path}")
        self.handle: lib.llama_model_p = handle
        vocab = lib.llama_model_get_vocab(handle)
        if not vocab:
            lib.llama_model_free(handle)
            raise RuntimeError(f"the model {path} has no vocabulary")
        self._vocab: lib.llama_vocab_p = vocab
        self.n_vocab: int = lib.llama_vocab_n_tokens(vocab)
        self.n_ctx_train: int = lib.llama_model_n_ctx_train(handle)
        self.chat_template: bytes | None = lib.llama_model_chat_template(handle, None) or None
        desc = ctypes.create_string_buffer(256)
        written = lib.llama_model_desc(handle, desc, len(desc))
        self.description = desc.value.decode("utf-8", "replace") if written > 0 else ""
        self._pieces: dict[int, bytes] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)

    @property
    def vocab(self) -> lib.llama_vocab_p:
        """llama.cpp's vocabulary handle (valid until `free`)."""
        return self._vocab

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids of `text`; `add_special` adds BOS where the model wants it, `parse_special` reads control text."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            tokens = (lib.llama_token * capacity)()
            count = lib.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, parse_special)
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing); may be part of a UTF-8 character."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        piece = self._render(token, self._piece_buffer)
        self._pieces[token] = piece
        return piece

    def text(self, tokens: Sequence[int]) -> bytes:
        """The bytes `tokens` print as (control tokens as nothing), as `piece` gives them.

        Safe from any thread (its own buffer, no cache), so a caller beside the engine thread may use it.
        """
        buffer = ctypes.create_string_buffer(256)
        return b"".join(self._render(token, buffer) for token in tokens)

    def _render(self, token: int, buffer: ctypes.Array[ctypes.c_char]) -> bytes:
        """llama.cpp's bytes for `token`, written into `buffer` (a larger one of its own if they do not fit)."""
        size = lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[: max(size, 0)]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(lib.llama_vocab_is_eog(self._vocab, token))

    def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of (role, content) messages rendered by the chat template, ending with the assistant's turn.

        Invariant: only the template's own text is read for control tokens; message content is always tokenized as
        plain text, so a user who types "<end_of_turn>" gets those characters, not the marker (prompt injection).
        How: the template renders a unique marker in place of each content, wrapped in vertical tabs to learn whether
        it trims that content; the text between markers is tokenized with special parsing, each content (trimmed
        where the template trims it) without, each piece on its own as reference chat encoders do. Roles go into the
        template as they are: callers must refuse roles that contain control-token text. Raises ValueError if the
        model has no template or llama.cpp does not know it.
        """
        nonce = secrets.token_hex(8)
        while any(nonce in role or nonce in content for role, content in messages):
            nonce = secrets.token_hex(8)
        rendered = self.apply_chat_template(
            [(role, f"\v@{nonce}:{index}@\v") for index, (role, _) in enumerate(messages)]
        )
        tokens: list[int] = []
        start = 0
        for match in re.finditer(f"(\v?)@{nonce}:(\\d+)@(\v?)", rendered):
            tokens += self.tokenize(rendered[start : match.start()], add_special=start == 0, parse_special=True)
            content = messages[int(match.group(2))][1]
            if not match.group(1):
                content = content.lstrip(_C_WHITESPACE)
            if not match.group(3):
                content = content.rstrip(_C_WHITESPACE)
            tokens += self.tokenize(content, add_special=False, parse_special=False)
            start = match.end()
        tokens += self.tokenize(rendered[start:], add_special=start == 0, parse_special=True)
        return tokens

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt text for (role, content) messages, ending with the assistant's turn.

        Raises ValueError if the model has no template or llama.cpp does not know it.
        """
        if self.chat_template is None:
            raise ValueError("the model has no chat template")
        encoded = [(role.encode("utf-8"), content.encode("utf-8")) for role, content in messages]
        chat = (lib.llama_chat_message * len(encoded))()
        for slot, (role, content) in zip(chat, encoded, strict=True):
            slot.role = role
            slot.content = content
        capacity = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
        while True:
            buffer = ctypes.create_string_buffer(capacity)
            size = lib.llama_chat_apply_template(self.chat_template, chat, len(encoded), True, buffer, capacity)
            if size < 0:
                raise ValueError("llama.cpp does not support this model's chat template")
            if size <= capacity:
                return buffer.raw[:size].decode("utf-8", "replace")
            capacity = size

    def free(self) -> None:
        if self.handle:
            lib.llama_model_free(self.handle)
            self.handle = lib.llama_model_p(0)


def max_sequence_ids() -> int:
    """Sequence ids a unified KV cache accepts (LLAMA_MAX_SEQ), whatever the context's n_seq_max."""
    return int(lib.llama_max_parallel_sequences())


@dataclass(frozen=True, slots=True)
class ContextParams:
    """How to size a context for continuous batching.

    `n_seq_max` is the most sequences one decode holds (it sizes the logits buffer, 1 MiB per row of a 262k
    vocabulary); a unified cache accepts any sequence id below `max_sequence_ids()` beside them. `n_batch` is the
    most tokens one decode takes; llama.cpp computes them in parts of `n_ubatch` (at most n_batch), for which it
    sizes its compute buffer.
    """

    n_ctx: int
    n_seq_max: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    kv_unified: bool


class LlamaContext:
    """A llama.cpp context with its KV memory and one reusable token batch.

    Invariant: one output row per sequence per decode at most, so the logits buffer is sized for `n_seq_max` rows
    rather than `n_batch` (262k-vocabulary rows are 1 MiB each). Not thread-safe: owned by the engine thread.
    """

    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = min(params.n_ubatch, params.n_batch)
        cparams.n_seq_max = params.n_seq_max
        cparams.n_outputs_max = params.n_seq_max
        cparams.n_outputs_max_per_seq = 1
        cparams.n_threads = params.n_threads
        cparams.n_threads_batch = params.n_threads
        cparams.kv_unified = params.kv_unified
        cparams.no_perf = True
        handle = lib.llama_init_from_model(model.handle, cparams)
        if not handle:
            raise RuntimeError("llama.cpp could not create a context")
        self.handle: lib.llama_context_p = handle
        memory = lib.llama_get_memory(handle)
        if not memory:
            lib.llama_free(handle)
            raise RuntimeError("the llama.cpp context has no KV memory")
        self._memory: lib.llama_memory_t = memory
        self.n_ctx: int = lib.llama_n_ctx(handle)
        self.n_ctx_seq: int = lib.llama_n_ctx_seq(handle)
        self.n_batch = params.n_batch
        self._n_vocab = model.n_vocab
        self._batch = lib.llama_batch_init(params.n_batch, 0, 1)
        self._batch_live = True
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(params.n_batch,))
        self._positions = np.ctypeslib.as_array(self._batch.pos, shape=(params.n_batch,))
        self._seq_counts = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(params.n_batch,))
        self._outputs = np.ctypeslib.as_array(self._batch.logits, shape=(params.n_batch,))
        self._size = 0

    @property
    def batch_size(self) -> int:
        """Tokens queued in the batch for the next decode."""
        return self._size

    def clear_batch(self) -> None:
        self._size = 0

    def add(self, tokens: Sequence[int], first_pos: int, seq_id: int, *, output_last: bool) -> int:
        """Queue consecutive tokens of one sequence; returns the batch index of the last one."""
        start, count = self._size, len(tokens)
        if count == 0 or start + count > self.n_batch:
            raise ValueError(f"cannot add {count} tokens to a batch holding {start} of {self.n_batch}")
        end = start + count
        self._tokens[start:end] = tokens
        self._positions[start:end] = np.arange(first_pos, first_pos + count, dtype=np.int32)
        self._seq_counts[start:end] = 1
        self._outputs[start:end] = 0
        if output_last:
            self._outputs[end - 1] = 1
        seq_ids = self._batch.seq_id
        for index in range(start, end):
            seq_ids[index][0] = seq_id
        self._size = end
        return end - 1

    def decode(self) -> int:
        """Run the queued batch; llama_decode's status (0 ok, 1 no KV room, 2 aborted, <0 fatal)."""
        self._batch.n_tokens = self._size
        status: int = lib.llama_decode(self.handle, self._batch)
        return status

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """The logits row of batch index `index` (an output row); a view valid until the next decode."""
        row = lib.llama_get_logits_ith(self.handle, index)
        if not row:
            raise RuntimeError(f"batch index {index} has no logits")
        return np.ctypeslib.as_array(row, shape=(self._n_vocab,))

    def set_threads(self, n_threads: int) -> None:
        """Threads for the next decodes (generation and prompt batches alike)."""
        lib.llama_set_n_threads(self.handle, n_threads, n_threads)

    def remove_sequence(self, seq_id: int) -> None:
        """Drop every KV cell of `seq_id` (never fails for a whole sequence)."""
        lib.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def copy_cells(self, src: int, dst: int, start: int, end: int) -> None:
        """The cells of `src` at positions [start, end) also belong to `dst`.

        In a unified cache they are shared, not copied: llama_memory_seq_cp only tags them with `dst`.
        """
        lib.llama_memory_seq_cp(self._memory, src, dst, start, end)

    def position_range(self, seq_id: int) -> tuple[int, int]:
        """The lowest and highest position `seq_id` holds in the cache ((-1, -1) when it holds none)."""
        return lib.llama_memory_seq_pos_min(self._memory, seq_id), lib.llama_memory_seq_pos_max(self._memory, seq_id)

    def clear_memory(self) -> None:
        """Drop every KV cell of every sequence."""
        lib.llama_memory_clear(self._memory, True)

    def free(self) -> None:
        if self._batch_live:
            lib.llama_batch_free(self._batch)
            self._batch_live = False
        if self.handle:
            lib.llama_free(self.handle)
            self.handle = lib.llama_context_p(0)


@dataclass(frozen=True, slots=True)
class SamplerParams:
    """One request's sampling settings; `seed` is a 32-bit value other than 0xFFFFFFFF."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    seed: int


class Sampler:
    """One request's llama.cpp sampler chain.

    Greedy (temperature below GREEDY_BELOW_TEMPERATURE): [penalties] greedy. Otherwise: [penalties] [top-k] [top-p]
    [min-p] temperature, then a seeded draw. Plain greedy (no penalties: the chain is llama.cpp's greedy sampler
    alone, which keeps no state) skips the chain and takes numpy's argmax of the logits row: the same token (the first
    maximum, as llama.cpp's greedy picks) without filling a candidate array of the whole vocabulary (262k entries:
    ≈0.3-0.5 ms per sequence per step).
    Owned by the engine thread; free it when the request ends.
    """

    def __init__(self, model: LlamaModel, params: SamplerParams) -> None:
        if not 0 <= params.seed < _RANDOM_SEED:
            raise ValueError(f"seed {params.seed} is outside [0, {_RANDOM_SEED})")
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = lib.llama_sampler_chain_init(chain_params)
        if not chain:
            raise RuntimeError("llama.cpp could not create a sampler chain")
        self._chain: lib.llama_sampler_p | None = chain
        self.penalized = params.repetition_penalty != 1.0
        greedy = params.temperature < GREEDY_BELOW_TEMPERATURE
        self._argmax = greedy and not self.penalized
        if self.penalized:
            self._add(lib.llama_sampler_init_penalties(model.n_vocab, PENALTY_LAST_N, params.repetition_penalty, 0, 0))
        if greedy:
            self._add(lib.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            self._add(lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            self._add(lib.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            self._add(lib.llama_sampler_init_min_p(params.min_p, 1))
        self._add(lib.llama_sampler_init_temp(params.temperature))
        self._add(lib.llama_sampler_init_dist(params.seed))

    @property
    def argmax(self) -> bool:
        """Whether the pick is the logits row's first maximum alone (plain greedy: no penalties, no state)."""
        return self._argmax

    def _add(self, sampler: lib.llama_sampler_p) -> None:
        lib.llama_sampler_chain_add(self._chain, sampler)

    def accept(self, tokens: Sequence[int]) -> None:
        """Record tokens the model saw without sampling them (the prompt), for the repetition penalty."""
        for token in tokens:
            lib.llama_sampler_accept(self._chain, token)

    def sample(self, context: LlamaContext, index: int) -> int:
        """Draw from the logits of batch index `index` and record the choice."""
        if self._argmax:
            return int(np.argmax(context.logits(index)))
        token: int = lib.llama_sampler_sample(self._chain, context.handle, index)
        return token

    def free(self) -> None:
        if self._chain is not None:
            lib.llama_sampler_free(self._chain)
            self._chain = None
