"""NOT a mirror: guided decoding in the simulated worker, through the real llguidance over a byte vocabulary.

What follows TensorRT-LLM (`_torch/pyexecutor/grammar_matcher.py`, `LLGuidanceMatcherFactory.create`, commit 0fccc5b;
`guided_decoder.py`): one matcher per request, created when its context ends (the last prompt chunk); the guide types
compile as `JSON` → the schema {"type": "object"}, `JSON_SCHEMA` → `grammar_from_json_schema`, `REGEX` →
`grammar_from_regex`, `EBNF_GRAMMAR` → `grammar_from_lark` (the llguidance backend reads a grammar as Lark, not EBNF),
anything else → ValueError("Unsupported guide type"); a grammar llguidance rejects → ValueError("LLGuidance matcher
error: ...") raised inside the executor's step; each step masks the logits with the matcher's allowed tokens, the end
token among them once the matcher accepts, and the sampled token is fed back to the matcher.

What is simulated: the real factory builds its tokenizer from the model's Hugging Face tokenizer (`LLTokenizer(
tokenizer_str, n_vocab=..., eos_token=...)`); the double's three-byte vocabulary has 2**26 ids, too many for that, so
a guided sequence decodes one byte at a time: the llguidance vocabulary here is the 256 one-byte pieces plus the end
token, mapped onto the double's ids (`to_model`). The simulated model picks, among the allowed tokens, the end token
first, then a closing `}` `]` `"`, then the byte its own text has at this position, then the lowest other byte
(whitespace last), so every guide that admits a finite output ends soon, deterministically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import llguidance
import llguidance.numpy
import numpy as np
from tensorrt_llm._double.tokenizer import EOS, piece_ids
from tensorrt_llm.bindings.executor import GuidedDecodingParams

if TYPE_CHECKING:
    from numpy.typing import NDArray

END = 256
"""The end token's id in the byte vocabulary (the model's EOS)."""

CLOSERS = b'}]"'
WHITESPACE = b" \t\r\n"
PREFERENCE = (
    list(CLOSERS) + [b for b in range(256) if b not in CLOSERS and b not in WHITESPACE] + list(WHITESPACE)
)  # fmt: skip
"""The order in which the simulated model takes an allowed byte that is not its own."""


class _Bytes:
    """The byte vocabulary as llguidance's TokenizerWrapper reads it: token b is byte b, token 256 ends the text."""

    eos_token_id = END
    bos_token_id = None
    tokens: ClassVar[list[bytes]] = [bytes([b]) for b in range(256)] + [b"<|eos|>"]
    special_token_ids: ClassVar[list[int]] = [END]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


TOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))


def to_model(token: int) -> int:
    """The double's id for a token of the byte vocabulary."""
    return EOS if token == END else piece_ids(bytes([token]))[0]


def grammar(params: GuidedDecodingParams) -> str:
    """The llguidance grammar for a guide, as `LLGuidanceMatcherFactory.create` makes it."""
    guide_type = GuidedDecodingParams.GuideType
    match params.guide_type:
        case guide_type.JSON:
            return llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}')
        case guide_type.JSON_SCHEMA:
            return llguidance.LLMatcher.grammar_from_json_schema(params.guide or "")
        case guide_type.REGEX:
            return llguidance.LLMatcher.grammar_from_regex(params.guide or "")
        case guide_type.EBNF_GRAMMAR:
            return llguidance.LLMatcher.grammar_from_lark(params.guide or "")
        case _:
            raise ValueError(f"Unsupported guide type: {params.guide_type}.")


class Guide:
    """One guided sequence's matcher and the simulated model's choice among the tokens it allows."""

    def __init__(self, params: GuidedDecodingParams) -> None:
        self._matcher: Any = llguidance.LLMatcher(TOKENIZER, grammar(params), log_level=0)
        if self._matcher.is_error():
            raise ValueError(f"LLGuidance matcher error: {self._matcher.get_error()}")
        self._mask: NDArray[np.int32] = llguidance.numpy.allocate_token_bitmask(1, TOKENIZER.vocab_size)

    def next_token(self, wanted: int | None) -> int:
        """The double's id of the next token: the model's preference among the allowed ones, fed to the matcher."""
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._mask, 0)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")
        if allowed[END]:
            token = END
        else:
            closers = [b for b in CLOSERS if allowed[b]]
            if closers:
                token = closers[0]
            elif wanted is not None and allowed[wanted]:
                token = wanted
            else:
                token = next(b for b in PREFERENCE if allowed[b])
        if not self._matcher.consume_token(token):
            raise ValueError(f"LLGuidance matcher error: {self._matcher.get_error()}")
        return to_model(token)
