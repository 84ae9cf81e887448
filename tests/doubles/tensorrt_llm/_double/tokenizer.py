"""NOT a mirror: a stand-in for the Hugging Face tokenizer a real model ships: UTF-8 bytes, three to a token.

A token is a run of up to three bytes, so a token is usually several characters (deltas look like a real model's)
and a four-byte character always spans two tokens (streaming must never split it). Ids: EOS=1, BOS=2, EOT=3 (an
end-of-turn token the generation config lists beside EOS, as Llama 3's <|eot_id|>), and 16 + (bytes << 2 | length)
for a run of `length` bytes. Its chat template behaves as strict Hugging Face templates (Mistral's, Gemma's) do:
roles other than an opening system message must alternate user/assistant starting with user, else the template's
`raise_exception` raises jinja2's TemplateError (transformers 4.57.1 `utils/chat_template_utils.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from tensorrt_llm._double import SIMULATION

EOS = 1
BOS = 2
EOT = 3
FIRST_PIECE = 16
VOCAB_SIZE = FIRST_PIECE + (1 << 26)
SPECIALS = {EOS: "<|eos|>", BOS: "<|bos|>", EOT: "<|eot|>"}
ALTERNATION = "Conversation roles must alternate user/assistant/user/assistant/..."
NO_TEMPLATE = (
    "Cannot use chat template functions because tokenizer.chat_template is not set and no template argument was "
    "passed! For information about writing templates and setting the tokenizer.chat_template attribute, please see "
    "the documentation at https://huggingface.co/docs/transformers/main/en/chat_templating"
)


def piece_ids(data: bytes) -> list[int]:
    """The token ids of `data`: consecutive runs of three bytes (the last may be shorter)."""
    return [
        FIRST_PIECE + (int.from_bytes(data[i : i + 3].ljust(3, b"\0"), "big") << 2 | len(data[i : i + 3]))
        for i in range(0, len(data), 3)
    ]


def piece_bytes(token: int) -> bytes:
    """The bytes of one piece token (b"" for a special or an id outside the vocabulary)."""
    if not FIRST_PIECE <= token < VOCAB_SIZE:
        return b""
    value = token - FIRST_PIECE
    length = value & 3
    return (value >> 2).to_bytes(3, "big")[:length]


class ByteTokenizer:
    """The subset of a Hugging Face PreTrainedTokenizerFast the LLM API and Rillet use."""

    eos_token_id = EOS
    bos_token_id = BOS
    pad_token_id = None
    name_or_path = "tensorrt-llm-double/byte-triplets"
    clean_up_tokenization_spaces = False
    is_fast = True

    def __len__(self) -> int:
        return VOCAB_SIZE

    @property
    def chat_template(self) -> str | None:
        return "{role}: {content} lines" if SIMULATION.chat_template else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + piece_ids(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False, **_: Any) -> str:
        parts: list[str] = []
        run = bytearray()
        for token in token_ids:
            if token in SPECIALS:
                if not skip_special_tokens:
                    parts.append(run.decode("utf-8", errors="replace"))
                    run.clear()
                    parts.append(SPECIALS[token])
            else:
                run += piece_bytes(token)
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def get_chat_template(self, chat_template: str | None = None, tools: Any = None) -> str:
        if self.chat_template is None:
            raise ValueError(NO_TEMPLATE)
        return self.chat_template

    def apply_chat_template(
        self,
        conversation: Sequence[dict[str, str]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **_: Any,
    ) -> str | list[int]:
        if self.chat_template is None:
            raise ValueError(NO_TEMPLATE)
        turns = [m["role"] for m in conversation]
        if turns and turns[0] == "system":
            turns = turns[1:]
        if any(role != ("user", "assistant")[i % 2] for i, role in enumerate(turns)):
            raise TemplateError(ALTERNATION)  # the template's raise_exception(...)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in conversation)
        if add_generation_prompt:
            text += "assistant: "
        return self.encode(text) if tokenize else text
