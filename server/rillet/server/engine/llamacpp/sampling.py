"""A request's sampler on llama.cpp, its seed, and the logprobs of a logits row (the last two pure)."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from rillet.server.types import SamplingParams, TokenLogprob, TokenLogprobs

if TYPE_CHECKING:
    from rillet.server.engine.llamacpp.native import LlamaModel, Sampler

__all__ = ["new_sampler", "sampler_seed", "token_logprobs"]

_SEED_MODULUS = 0xFFFFFFFF
"""Seeds are reduced modulo this: llama.cpp reads the value 0xFFFFFFFF as "pick a random seed"."""


def token_logprobs(logits: npt.NDArray[np.float32], token: int, top: int) -> TokenLogprobs:
    """Log-softmax of one raw logits row (before sampling transforms): the chosen token and the `top` best.

    Alternatives are ordered by log-probability, ties by token id.
    """
    row = logits.astype(np.float64)
    peak = float(row.max())
    log_total = peak + math.log(float(np.exp(row - peak).sum()))
    alternatives: tuple[TokenLogprob, ...] = ()
    if top > 0:
        top = min(top, row.shape[0])
        best = np.argpartition(row, -top)[-top:]
        best = best[np.lexsort((best, -row[best]))]
        alternatives = tuple(TokenLogprob(int(i), float(row[i]) - log_total) for i in best)
    return TokenLogprobs(TokenLogprob(token, float(row[token]) - log_total), alternatives)


def sampler_seed(seed: int | None) -> int:
    """The 32-bit seed for llama.cpp's dist sampler: a request's seed reduced, or a fresh random one."""
    if seed is None:
        return secrets.randbelow(_SEED_MODULUS)
    return seed % _SEED_MODULUS


def new_sampler(model: LlamaModel, sampling: SamplingParams, seen: list[int]) -> Sampler:
    """A sampler chain for `sampling`; a penalized one has seen the last of `seen` (the prompt, or all so far)."""
    from rillet.server.engine.llamacpp import native

    params = native.SamplerParams(
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        repetition_penalty=sampling.repetition_penalty,
        seed=sampler_seed(sampling.seed),
    )
    sampler = native.Sampler(model, params)
    if sampler.penalized:
        sampler.accept(seen[-native.PENALTY_LAST_N :])
    return sampler
