"""Output constraints on llama.cpp: llguidance's tokenizer over the GGUF's own vocabulary, and a sequence's guide."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from rillet.server.errors import Internal
from rillet.server.reasons import Reason

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

    from rillet.server.engine.llamacpp.native import LlamaContext, LlamaModel, Sampler

__all__ = ["Guide", "apply", "guidance_tokenizer"]

SPARSE_WORDS = 8
"""A mask whose allowed tokens lie in at most 1/SPARSE_WORDS of its 32-token words is applied by keeping those
logits and filling the row (one pass over the row, not a pass over 262k bits): inside JSON's structure a step allows
a handful of tokens; inside a free string nearly all."""

_lock = threading.Lock()
_tokenizers: dict[Path, LLTokenizer] = {}
_vocabularies: list[LlamaModel] = []
"""The vocabulary-only models the tokenizers read: kept for the life of the process, since llguidance keeps a raw
pointer to one (it calls llama_tokenize on it) in every tokenizer and matcher it makes."""


def guidance_tokenizer(path: Path) -> LLTokenizer:
    """The llguidance tokenizer of the GGUF at `path`, from llama.cpp's own vocabulary (no Hugging Face files).

    Once per process and file (1-4 s for a 262k vocabulary: a pass over every token's bytes). Every end-of-generation
    token of the vocabulary is an end for the matcher, so a model that ends its turn with its own marker (Gemma's
    <end_of_turn>) ends a constrained output with it too, and only where the constraint accepts.
    """
    from llguidance.llamacpp import lltokenizer_from_vocab

    from rillet.server.engine.llamacpp import native

    key = path.resolve()
    with _lock:
        tokenizer = _tokenizers.get(key)
        if tokenizer is not None:
            return tokenizer
        native.init_backend()
        vocabulary = native.LlamaModel(str(key), vocab_only=True)
        _vocabularies.append(vocabulary)
        ends = [token for token in range(vocabulary.n_vocab) if vocabulary.is_end_of_generation(token)]
        with warnings.catch_warnings():  # it reads each token's attributes through a deprecated alias, per token
            warnings.simplefilter("ignore", DeprecationWarning)
            tokenizer = lltokenizer_from_vocab(vocabulary.vocab, n_vocab=vocabulary.n_vocab, eos_token=ends)
        _tokenizers[key] = tokenizer
        return tokenizer


class Guide:
    """One constrained sequence's matcher on the engine thread: the tokens it allows, the tokens it has taken.

    Invariants: the matcher has consumed exactly the tokens the sequence emitted, in order (kept across a
    preemption: a resumed sequence re-prefills tokens it already emitted, the matcher goes on from where it was);
    a sampled token is one the matcher allowed (every other logit is -inf when the sampler draws), so an
    end-of-generation token is sampled only where the matcher accepts. A matcher that fails raises Internal
    (ENGINE_REQUEST_FAILED) for its sequence alone.
    """

    def __init__(self, matcher: LLMatcher) -> None:
        self._matcher = matcher
        self._words: npt.NDArray[np.int32] | None = None  # the step's mask, one bit per token (sized at first use)

    def sample(self, sampler: Sampler, context: LlamaContext, index: int) -> int:
        """The sampler's token from batch row `index` among those the constraint allows now (the row is masked)."""
        logits = context.logits(index)
        words = self.mask(logits.shape[0])
        if sampler.argmax:  # greedy: the best token stands if allowed (the masked argmax would pick it too)
            token = int(np.argmax(logits))
            if words[token >> 5] >> (token & 31) & 1:
                return token
        apply(logits, words)
        return sampler.sample(context, index)

    def consume(self, token: int) -> bool:
        """Take the emitted `token`; True when the constraint is complete (nothing but an end may follow)."""
        if not self._matcher.consume_token(token):
            raise self._failure()
        return self._matcher.is_stopped()

    def mask(self, vocabulary: int) -> npt.NDArray[np.int32]:
        """The tokens allowed now, one bit per token of a `vocabulary`-token row (the guide's buffer: use at once)."""
        if self._words is None:
            self._words = np.zeros((vocabulary + 31) // 32, dtype=np.int32)
        words = self._words
        self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        if self._matcher.is_error():
            raise self._failure()
        return words

    def _failure(self) -> Internal:
        return Internal(
            f"the output constraint failed: {self._matcher.get_error()}", reason=Reason.ENGINE_REQUEST_FAILED
        )


def apply(logits: npt.NDArray[np.float32], words: npt.NDArray[np.int32]) -> None:
    """Set the logit of every token `words` does not allow to -inf, in place."""
    size = logits.shape[0]
    kept = np.flatnonzero(words)
    if kept.size * SPARSE_WORDS <= words.size:
        bits = np.unpackbits(words[kept].view(np.uint8), bitorder="little").reshape(-1, 32)
        tokens = (kept[:, None] * 32 + np.arange(32))[bits.astype(bool)]
        tokens = tokens[tokens < size]
        allowed = logits[tokens]
        logits.fill(-np.inf)
        logits[tokens] = allowed
        return
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:size]
    np.copyto(logits, np.float32(-np.inf), where=bits == 0)
