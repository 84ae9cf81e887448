"""Mirror of `tensorrt_llm/llmapi/tokenizer.py`: `TokenizerBase` and `TransformersTokenizer` (the methods Rillet uses).

`decode_incrementally` follows the real TRTLLM variant's rule: text that ends in U+FFFD (an incomplete UTF-8
sequence) is held back until more tokens arrive or `flush`; the returned text is `prev_text` plus the new part, so
`CompletionOutput.text` only ever grows by whole characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tensorrt_llm._double.tokenizer import ByteTokenizer


class TokenizerBase:
    """The protocol a tokenizer handed to LLM implements (the real one subclasses PreTrainedTokenizerBase, whence
    these methods come)."""

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        raise NotImplementedError

    def decode(self, token_ids: Sequence[int], *args: Any, **kwargs: Any) -> str:
        raise NotImplementedError

    def get_chat_template(self, chat_template: str | None = None, tools: list[dict[str, Any]] | None = None) -> str:
        raise NotImplementedError

    def apply_chat_template(self, conversation: Sequence[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class TransformersTokenizer(TokenizerBase):
    """A wrapper for a Hugging Face tokenizer; the default tokenizer of LLM. `.tokenizer` is the wrapped one."""

    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.encode(text, *args, **kwargs)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.pad_token_id

    @property
    def name_or_path(self) -> str:
        return self.tokenizer.name_or_path

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(text, *args, **kwargs)

    def decode(self, token_ids: Sequence[int], *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, *args, **kwargs)

    def get_chat_template(self, chat_template: str | None = None, tools: list[dict[str, Any]] | None = None) -> str:
        return self.tokenizer.get_chat_template(chat_template, tools)

    def apply_chat_template(self, conversation: Sequence[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(conversation, *args, **kwargs)

    def decode_incrementally(
        self,
        token_ids: list[int],
        prev_text: str | None = None,
        states: dict[str, Any] | None = None,
        *,
        flush: bool = False,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
        stream_interval: int | None = 1,
    ) -> tuple[str, dict[str, Any]]:
        prev_text = prev_text or ""
        pending: list[int] = list((states or {}).get("pending_tokens", [])) + list(token_ids)
        new_text = self.tokenizer.decode(pending, skip_special_tokens=skip_special_tokens)
        if not flush and new_text.endswith("\ufffd"):
            return prev_text, {"pending_tokens": pending}
        return prev_text + new_text, {}


def tokenizer_factory(obj: Any = None, **kwargs: Any) -> TokenizerBase | None:
    """The real one loads a Hugging Face tokenizer from a path or id; the double always builds its byte tokenizer."""
    if obj is None:
        return None
    if isinstance(obj, TokenizerBase):
        return obj
    return TransformersTokenizer(ByteTokenizer())
