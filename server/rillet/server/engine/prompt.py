"""The prompt policy of text engines: what a prompt's tokens must satisfy on one model, one reason per condition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rillet.server.errors import InvalidArgument
from rillet.server.reasons import Reason

__all__ = ["PromptPolicy"]


@dataclass(frozen=True, slots=True)
class PromptPolicy:
    """The limits of one model's prompts, and the INVALID_ARGUMENT each broken one raises before any output.

    - TOKEN_ID_OUT_OF_RANGE (`check_ids`): a token id the client sent is outside the vocabulary (checked before the
      model sees it: on a GPU an id past the embedding table is a device-side fault);
    - EMPTY_PROMPT (`check_not_empty`): the prompt has no tokens (the model has nothing to continue);
    - PROMPT_TOO_LONG (`check_length`): the prompt plus max_tokens exceed `context_length`, the tokens one sequence
      may hold; or, for an engine that takes a whole prompt in one batch (`max_prompt_tokens`, TensorRT-LLM without
      chunked prefill), the prompt alone exceeds that batch.
    The server's own limits (validation.py: characters and id counts, before tokenization) come first; these count
    the model's tokens, so an engine applies them once it has tokenized.
    """

    vocab_size: int
    context_length: int
    max_prompt_tokens: int | None = None

    def check_ids(self, ids: Sequence[int]) -> None:
        """Every id of a client's token-id prompt names a token of the vocabulary."""
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(t for t in ids if not 0 <= t < self.vocab_size)
            raise InvalidArgument(
                f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})",
                field="params.token_ids",
                reason=Reason.TOKEN_ID_OUT_OF_RANGE,
            )

    def check_not_empty(self, prompt_tokens: int) -> None:
        """The prompt has at least one token."""
        if prompt_tokens == 0:
            raise InvalidArgument("the prompt has no tokens", field="params.prompt", reason=Reason.EMPTY_PROMPT)

    def check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        """The prompt and its output fit one sequence, and the prompt fits one batch where that is the limit."""
        if prompt_tokens + max_tokens > self.context_length:
            raise InvalidArgument(
                f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context of "
                f"{self.context_length} tokens per sequence",
                field="params.prompt",
                reason=Reason.PROMPT_TOO_LONG,
                metadata={
                    "prompt_tokens": str(prompt_tokens),
                    "max_tokens": str(max_tokens),
                    "context_length": str(self.context_length),
                },
            )
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            raise InvalidArgument(
                f"prompt of {prompt_tokens} tokens exceeds the {self.max_prompt_tokens} tokens the engine takes in "
                "one batch",
                field="params.prompt",
                reason=Reason.PROMPT_TOO_LONG,
                metadata={"prompt_tokens": str(prompt_tokens), "max_prompt_tokens": str(self.max_prompt_tokens)},
            )
