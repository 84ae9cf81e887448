"""Mirror of `tensorrt_llm/sampling_params.py` (1.2.1): `SamplingParams`, its validation and `_setup`, and
`GuidedDecodingParams` with the conversion the executor request gets (`_get_guided_decoding_params`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import BaseModel
from tensorrt_llm.bindings import executor as tllme


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """Mirror of `GuidedDecodingParams` (same file): at most one guide."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def _validate(self) -> None:
        guides = sum(bool(getattr(self, f.name)) for f in fields(self))
        if guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {guides}.")


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """Mirror of `SamplingParams`: every 1.2.1 field with its default; `__post_init__` validates like the real one.

    The real class is a keyword-only slotted dataclass; `_validate` raises ValueError for top_p outside [0, 1],
    top_k < 0, temperature < 0, best_of < n, greedy decoding with best_of > 1 (unless TLLM_ALLOW_N_GREEDY_DECODING),
    truncate_prompt_tokens < 1 and more than one guide; `logprobs`/`prompt_logprobs` are coerced with `x and int(x)`.
    NaN passes the real checks (every comparison with NaN is false); so it does here.
    """

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    _bad_word_ids: list[list[int]] | None = field(default=None, init=False, repr=False)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    _stop_word_ids: list[list[int]] | None = field(default=None, init=False, repr=False)

    embedding_bias: Any = None
    logits_processor: Any = None
    apply_batched_logits_processor: bool = False

    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False

    top_k: int | None = None
    top_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    beam_search_diversity_rate: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    prompt_ignore_length: int | None = None
    length_penalty: float | None = None
    early_stopping: int | None = None
    no_repeat_ngram_size: int | None = None
    min_p: float | None = None
    beam_width_array: list[int] | None = None

    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True
    return_encoder_output: bool = False
    return_perf_metrics: bool = False
    additional_model_outputs: list[str] | None = None

    _context_logits_auto_enabled: bool = False
    _generation_logits_auto_enabled: bool = False
    _return_log_probs: bool = False

    lookahead_config: Any = None
    guided_decoding: GuidedDecodingParams | None = None

    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    _stream_interval: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        self._validate()

    def _validate(self) -> None:
        if self.top_p is not None and (self.top_p < 0 or self.top_p > 1):
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if (
            self.best_of is not None
            and self.best_of > 1
            and self._greedy_decoding
            and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING", None)
        ):
            raise ValueError(
                "Greedy decoding in the LLM API does not allow multiple returns. Please set to best_of=1, "
                f"got best_of={self.best_of}. Please set to best_of=1 or set an environment variable "
                "TLLM_ALLOW_N_GREEDY_DECODING=1 to allow best_of > 1 under the greedy decoding."
            )
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(f"truncate_prompt_tokens must be >= 1, got {self.truncate_prompt_tokens}")
        if self.guided_decoding is not None:
            self.guided_decoding._validate()
        self.logprobs = self.logprobs and int(self.logprobs)
        self.prompt_logprobs = self.prompt_logprobs and int(self.prompt_logprobs)

    @staticmethod
    def params_imply_greedy_decoding(
        *, temperature: float | None, top_p: float | None, top_k: int | None, use_beam_search: bool | None
    ) -> bool:
        return (not use_beam_search) and (
            (temperature is None and top_p is None and top_k is None) or top_k == 1 or top_p == 0.0 or temperature == 0
        )

    @property
    def _greedy_decoding(self) -> bool:
        return self.params_imply_greedy_decoding(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, use_beam_search=self.use_beam_search
        )

    def _setup(
        self, tokenizer: Any, hf_model_config: Any, generation_config: Any, add_special_tokens: bool = False
    ) -> SamplingParams:
        """Fill end_id/pad_id from the tokenizer and tokenize `bad`/`stop` into word ids (as the real `_setup`)."""
        if self.end_id is None:
            self.end_id = tokenizer.eos_token_id
            self.pad_id = tokenizer.pad_token_id
            if self.pad_id is None:
                self.pad_id = self.end_id
        if self.bad is not None:
            words = [self.bad] if isinstance(self.bad, str) else self.bad
            self._bad_word_ids = [tokenizer.encode(s, add_special_tokens=add_special_tokens) for s in words]
        if self.stop is not None:
            words = [self.stop] if isinstance(self.stop, str) else self.stop
            self._stop_word_ids = [tokenizer.encode(s, add_special_tokens=add_special_tokens) for s in words]
        eos = getattr(generation_config, "eos_token_id", None)
        if eos is not None:
            eos_ids = [eos] if isinstance(eos, int) else list(eos)
            if not self.stop_token_ids:
                self.stop_token_ids = []
            for token in eos_ids:
                if token != self.end_id and token not in self.stop_token_ids:
                    self.stop_token_ids.append(token)
            if not self.stop_token_ids:
                self.stop_token_ids = None
        return self

    def _get_stop_words(self) -> list[list[int]]:
        words = [[i] for i in self.stop_token_ids] if self.stop_token_ids else []
        if self.stop is None:
            return words
        if self._stop_word_ids is None:
            raise RuntimeError(
                f"{type(self).__name__}.stop ({self.stop}) is not processed by tokenizer, please call the setup method."
            )
        return words + self._stop_word_ids

    def _get_stop_reasons_and_words(self) -> list[tuple[int | str, list[int]]]:
        """(stop_reason, word ids) pairs: token ids first, then each stop string with its tokenization."""
        pairs: list[tuple[int | str, list[int]]] = []
        if self.stop_token_ids:
            pairs.extend((token, [token]) for token in self.stop_token_ids)
        if self.stop is not None and self._stop_word_ids is not None:
            words = [self.stop] if isinstance(self.stop, str) else self.stop
            pairs.extend(zip(words, self._stop_word_ids, strict=True))
        return pairs

    def _get_guided_decoding_params(self) -> tllme.GuidedDecodingParams | None:
        """The executor's guide: json_object first, then json (a pydantic model's schema, a dict dumped), regex,
        grammar; in that order, as the real one checks them."""
        if self.guided_decoding is None:
            return None
        guide_type = tllme.GuidedDecodingParams.GuideType
        if self.guided_decoding.json_object:
            return tllme.GuidedDecodingParams(guide_type.JSON)
        if self.guided_decoding.json is not None:
            json_schema = self.guided_decoding.json
            if isinstance(json_schema, BaseModel):
                json_schema = json_schema.model_json_schema()
            if isinstance(json_schema, dict):
                json_schema = json.dumps(json_schema)
            return tllme.GuidedDecodingParams(guide_type.JSON_SCHEMA, json_schema)
        if self.guided_decoding.regex is not None:
            return tllme.GuidedDecodingParams(guide_type.REGEX, self.guided_decoding.regex)
        if self.guided_decoding.grammar is not None:
            return tllme.GuidedDecodingParams(guide_type.EBNF_GRAMMAR, self.guided_decoding.grammar)
        if self.guided_decoding.structural_tag is not None:
            return tllme.GuidedDecodingParams(guide_type.STRUCTURAL_TAG, self.guided_decoding.structural_tag)
        return None
